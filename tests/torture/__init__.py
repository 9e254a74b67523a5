"""Crash and cluster campaigns: real servers, real devices, injected faults, and a checker.

``python -m tests.torture crash|cluster --seconds N`` runs one campaign for as long as
asked (docs/operations.md, "Crash campaigns"); tests/torture/test_campaigns.py runs a short
budget of each in the normal test command.
"""
