"""The benchmark's report: medians, the paired ratios of alternating runs, and the table the README carries."""

from __future__ import annotations

import orjson

from pipeline.bench.forward import forwarded
from pipeline.bench.run import Figures, Timed, _median_of, _paired_ratios, _ratios, render


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


def test_the_table_shows_the_floor_a_bare_forwarder_sees_beside_the_workers_latency() -> None:
    f = _figures()
    f["latency"]["forwarder_floor"] = {"actions": 10, "p50_ms": 0.4, "p95_ms": 0.8, "p99_ms": 1.2}
    assert "no work between them) | p50 0.4 ms, p95 0.8 ms, p99 1.2 ms |" in render(f)


def test_the_tail_of_each_third_of_a_latency_run_is_its_own() -> None:
    timed = Timed(latencies=[0.010, 0.020, 0.300, 0.040], sent_after_s=[0.5, 1.5, 2.5, 3.5], hops=[], events=4)
    figures = timed.figures(seconds=3.0)  # the last one was sent after the run: in no third
    assert figures["p99_by_third_ms"] == [10.0, 20.0, 300.0] and figures["p99_ms"] == 300.0
    f = _figures()
    f["latency"]["p99_by_third_ms"] = figures["p99_by_third_ms"]
    assert "(10 actions); p99 by third of the run 10.0 ms, 20.0 ms, 300.0 ms |" in render(f)


def test_the_forwarder_passes_on_purchases_only_as_the_latency_reader_reads_actions() -> None:
    purchase = orjson.dumps({"type": "purchase", "event_id": "e1", "note": "a purchase"})
    assert orjson.loads(forwarded(purchase) or b"") == {"trigger_event_ids": ["e1"]}
    assert forwarded(orjson.dumps({"type": "page_view", "event_id": "e2", "note": '"purchase"'})) is None
    assert forwarded(orjson.dumps({"type": "add_to_cart", "event_id": "e3"})) is None
