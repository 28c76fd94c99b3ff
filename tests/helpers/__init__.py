"""Test helpers shared by the test suites: TLS material, a real nginx, a faulty HTTPS server."""
