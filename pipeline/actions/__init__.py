"""Actions: rules that turn profile changes and timers into next-best-actions."""
