"""The HTTP collector (`omni collect`): Segment's tracking API in, events of our contract out."""
