"""Backward rules (being written)."""
