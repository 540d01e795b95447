"""Ingest: the contract channel systems produce to, validation, normalisation and dead letters."""
