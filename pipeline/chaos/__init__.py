"""Fault injection: a TCP proxy that breaks the Kafka protocol on purpose, and the campaign that uses it."""
