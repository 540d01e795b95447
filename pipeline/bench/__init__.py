"""Bench: throughput figures measured against a real broker."""
