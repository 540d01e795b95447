"""Omnichannel customer pipeline: ingest -> identity -> profiles -> actions, with ops around it."""

__version__ = "0.1.0"
