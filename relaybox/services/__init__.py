"""Use cases over the store and the bus; each takes its dependencies (and a clock)."""
