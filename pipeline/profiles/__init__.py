"""Profiles: every customer's state, updated by pure functions of (state, event)."""
