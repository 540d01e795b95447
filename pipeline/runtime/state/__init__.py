"""State: partition-aligned key-value stores with transactions, changelogs and recovery."""
