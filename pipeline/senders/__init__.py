"""Reference senders: how a downstream team consumes an action topic and reports back on ``outcomes``."""
