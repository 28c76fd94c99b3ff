"""Device-side installer: streams a signed bundle into the inactive slot."""
