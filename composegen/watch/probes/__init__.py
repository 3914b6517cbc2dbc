"""Probes: each a small class whose `read(now)` returns signals (see watch/types.py)."""
