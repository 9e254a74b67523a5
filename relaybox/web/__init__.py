"""The browser device: the web app, the JavaScript SDK and vendored UI assets (data only)."""
