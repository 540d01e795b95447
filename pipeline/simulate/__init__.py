"""Simulate: a synthetic population of customers moving across channels."""
