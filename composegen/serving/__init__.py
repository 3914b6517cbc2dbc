"""Serving: the models a stack holds, how they get there, and the proof that they serve."""
