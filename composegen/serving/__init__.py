"""Serving: the models a stack needs, fetched into its stores and loaded (issue 11)."""
