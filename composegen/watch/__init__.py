"""`composegen watch`: probes collect signals, rules turn them into events and decisions, heal
carries the decisions out through engine/failover.py, metrics and views show the result.

types.py holds the values passed between those parts (see ARCHITECTURE.md, "watch/")."""
