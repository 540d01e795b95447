"""Measuring what each play earns: holdouts, touches, attribution, outcomes, uplift and the report."""
