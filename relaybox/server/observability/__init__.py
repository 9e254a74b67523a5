"""Metrics, tracing, health and logs of a server process; app.py installs each explicitly."""
