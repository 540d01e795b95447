"""Ops: broker, topics, metrics and the live view."""
