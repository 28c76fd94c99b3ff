"""Host-side tool that builds, inspects and verifies signed update bundles."""
