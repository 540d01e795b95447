"""The identity graph against the truth: a simulated population, two worker processes, eight partitions."""

from __future__ import annotations

from pipeline.identity.evaluate import evaluate


def test_two_workers_resolve_a_population_exactly() -> None:
    result = evaluate(people=400, workers=2, partitions=8, seed=5, log=lambda line: None)
    assert result["wrong_pairs"] == 0 and result["precision"] == 1.0  # no two people ever fused
    assert result["recall"] >= 0.99, result
    assert result["merges"] > 0 and result["merges_refused"] > 0  # the hard cases were there: merged, and refused
