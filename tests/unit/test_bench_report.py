"""The benchmark's report: medians, the paired ratios of alternating runs, and the table the README carries."""

from __future__ import annotations

from pipeline.bench.run import Figures, _median_of, _paired_ratios, _ratios, render


def _figures() -> Figures:
    quix: list[Figures] = [{"events_per_s": 30_000}, {"events_per_s": 20_000}, {"failed": "boom"}]
    pipeline: list[Figures] = [{"events_per_s": 33_000}, {"events_per_s": 24_000}, {"events_per_s": 28_000}]
    f: Figures = {
        "date": "2026-12-03T22:00:00+00:00", "machine": "2 cores", "broker": "embedded", "events": 100_000,
        "raw_batched_events_per_s": 200_000, "raw_per_event_events_per_s": 40_000,
        "engine_reference_events_per_s": 150_000,
        "quix_reference": _median_of(quix), "pipeline_1_worker": _median_of(pipeline),
        "pairs_pipeline_over_quix": _paired_ratios(pipeline, quix),
        "pipeline_2_workers": {"events_per_s": 45_000},
        "latency": {"rate": 14_000, "actions": 10, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
                    "action_hop": {"actions": 10, "p50_ms": 0.5, "p95_ms": 1.0, "p99_ms": 1.5}},
    }  # fmt: skip
    _ratios(f)
    return f


def test_each_pipeline_run_is_divided_by_the_quix_run_just_before_it_and_a_failed_pair_is_left_out() -> None:
    assert _figures()["pairs_pipeline_over_quix"] == [1.1, 1.2]


def test_the_headline_ratio_is_median_over_median_and_the_table_shows_the_pairs_beside_it() -> None:
    f = _figures()
    # Quix: median of the two good runs (20,000 and 30,000) is the upper one; the pipeline's is 28,000.
    assert f["quix_reference"]["events_per_s"] == 30_000 and f["pipeline_1_worker"]["events_per_s"] == 28_000
    assert f["ratios"]["pipeline_over_quix_reference"] == 0.93
    table = render(f)
    assert "| full pipeline / Quix reference job | 0.93 |" in table
    assert "(pipeline over the Quix run just before it) | 1.1, 1.2 |" in table


def test_the_table_splits_latency_into_the_actions_own_hop() -> None:
    assert "| of that, the action's own hop: from the worker producing it to its reader | p50 0.5 ms, p95 1.0 ms, p99 1.5 ms |" in render(_figures())
