"""The reference job on Quix Streams, run as its own process by ``omni bench``.

    python -m pipeline.bench.quix_ref BOOTSTRAP IN_TOPIC OUT_TOPIC EVENTS STATE_DIR

Prints one JSON line: {"events": N, "seconds": S}, timed from the first record
processed to the last, as the engine's figure is.
"""

from __future__ import annotations

import sys
import time
import uuid

import orjson


def main() -> None:
    from quixstreams import Application  # type: ignore[import-not-found]
    from quixstreams.models.topics import TopicConfig  # type: ignore[import-not-found]

    from pipeline.bench.reference import PARTITIONS, TOPIC_CONFIG

    bootstrap, in_topic, out_topic, events, state_dir = sys.argv[1:6]
    total = int(events)
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-ref-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    # Tansu reports only the topic configs it was given: name retention.ms explicitly.
    config = TopicConfig(num_partitions=PARTITIONS, replication_factor=1, extra_config=dict(TOPIC_CONFIG))
    source = app.topic(in_topic, value_deserializer="json", config=config)
    sink = app.topic(out_topic, value_serializer="json", config=config)
    progress = {"n": 0, "first": 0.0}

    def update(event: dict, state) -> dict:  # type: ignore[no-untyped-def,type-arg]
        if progress["n"] == 0:
            progress["first"] = time.perf_counter()
        current = state.get("customer", {"count": 0, "total": 0})
        current = {"count": current["count"] + 1, "total": current["total"] + event["amount"]}
        state.set("customer", current)
        progress["n"] += 1
        if progress["n"] >= total:
            print(orjson.dumps({"events": progress["n"], "seconds": time.perf_counter() - progress["first"]}).decode(), flush=True)
            app.stop()
        return {"customer": event["customer"], **current}

    app.dataframe(source).apply(update, stateful=True).to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
