"""The Sanic application: gateway, REST API, metrics."""
