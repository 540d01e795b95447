"""Engine: the batched consume -> process -> produce loop and its checkpoints."""
