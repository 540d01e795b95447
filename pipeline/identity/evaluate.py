"""How right the identity graph is: the pipeline's graph scored against the simulator's truth.

Precision is pairwise: of all pairs of identifiers the graph put in one profile,
the share that belong to one person (1.0: no two people ever fused). Recall is
over the pairs the events make linkable: identifiers of one person that some chain
of events ties together, and that ended in one profile. Identifiers used by more
than one person (a family tablet) belong to no one and are left out of both.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.bench.workers import WorkerProcess, wait_ready, wait_until
from pipeline.identity.export import graph_entries
from pipeline.ops.broker import EmbeddedBroker
from pipeline.ops.topics import apply_topics, load_topics
from pipeline.settings import Settings
from pipeline.simulate.identities import World, build_world
from pipeline.simulate.produce import produce_all


@dataclass(frozen=True, slots=True)
class Score:
    people: int
    identifiers: int
    profiles: int
    pairs_in_profiles: int
    wrong_pairs: int
    linkable_pairs: int
    linked_pairs: int
    precision: float
    recall: float


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def score(entries: list[dict[str, str]], world: World) -> Score:
    truth = {i: p for i, p in world.owner.items() if i not in world.shared}
    profile_of = {f"{e['identifier_type']}:{e['identifier']}": e["profile_id"] for e in entries}
    members: defaultdict[str, list[str]] = defaultdict(list)
    for ident, profile in profile_of.items():
        if ident in truth:
            members[profile].append(ident)
    in_profiles = sum(_pairs(len(m)) for m in members.values())
    right = sum(_pairs(n) for m in members.values() for n in Counter(truth[i] for i in m).values())

    # What the events link, by union-find over each event's identifiers (shared ones left out).
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for event_ids in world.links:
        ids = [i for i in event_ids if i in truth]
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
        for i in ids[:1]:
            find(i)
    components: defaultdict[str, list[str]] = defaultdict(list)
    for ident in parent:
        components[find(ident)].append(ident)
    linkable = sum(_pairs(len(c)) for c in components.values())
    linked = sum(_pairs(n) for c in components.values() for p, n in Counter(profile_of.get(i) for i in c).items() if p)
    return Score(
        people=len(set(world.owner.values())),
        identifiers=len(truth),
        profiles=len(set(profile_of.values())),
        pairs_in_profiles=in_profiles,
        wrong_pairs=in_profiles - right,
        linkable_pairs=linkable,
        linked_pairs=linked,
        precision=round(right / in_profiles, 6) if in_profiles else 1.0,
        recall=round(linked / linkable, 6) if linkable else 1.0,
    )


def evaluate(people: int, workers: int = 2, partitions: int = 8, seed: int = 11, log: Any = print) -> dict[str, Any]:
    """Run the whole pipeline on a simulated population and score its graph; a real broker, real workers."""
    world = build_world(people, seed)
    log(f"identity evaluation: {people} people, {len(world.records)} events, {workers} workers, {partitions} partitions")
    with EmbeddedBroker(Settings.from_env()) as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings.from_env().model_copy(update={
            "bootstrap": broker.bootstrap, "topic_prefix": f"idev-{uuid.uuid4().hex[:6]}.",
            "topics_file": _topics_with(partitions, tmp), "commit_interval_s": 1.0,
        })  # fmt: skip
        asyncio.run(apply_topics(settings, load_topics(settings.topics_file)))
        procs = [
            WorkerProcess.start(settings.model_copy(update={"state_dir": tmp / f"state-{n}"}), tmp / f"worker-{n}.log")
            for n in range(workers)
        ]
        try:
            wait_ready(procs, partitions)
            started = time.monotonic()
            asyncio.run(produce_all(settings, world.records))

            def applied() -> float:
                return sum(p.metrics().get("omni_events_processed_total", 0) for p in procs)

            wait_until(lambda: applied() >= len(world.records), 600, "every event to be applied", poll_s=0.5)
            elapsed = time.monotonic() - started
            log(f"  applied {len(world.records)} events in {elapsed:.1f} s: {len(world.records) / elapsed:,.0f} events/s")
            entries = _settled_graph(settings, procs, log)
            merges = sum(p.metrics().get("omni_identity_merges_total", 0) for p in procs)
            refused = sum(p.metrics().get("omni_identity_merges_refused_total", 0) for p in procs)
        finally:
            for p in procs:
                p.stop()
    result = {
        **asdict(score(entries, world)), "events": len(world.records), "workers": workers, "partitions": partitions,
        "events_per_s": round(len(world.records) / elapsed), "merges": int(merges), "merges_refused": int(refused),
        "shared_identifiers": len(world.shared),
    }  # fmt: skip
    log("  " + ", ".join(f"{k} {v}" for k, v in result.items()))
    return result


def _settled_graph(settings: Settings, procs: list[WorkerProcess], log: Any) -> list[dict[str, str]]:
    """The exported graph once two exports a few checkpoints apart agree: merges have run their course."""
    previous: list[dict[str, str]] | None = None
    for _ in range(60):
        time.sleep(2.5)  # more than two checkpoints (OMNI_COMMIT_INTERVAL_S 1 s here)
        entries = asyncio.run(graph_entries(settings))
        if entries == previous:
            return entries
        previous = entries
        log(f"  graph: {len(entries)} identifiers, still changing")
    raise RuntimeError("the identity graph did not settle in 150 s")


def _topics_with(partitions: int, tmp: Path) -> Path:
    doc = yaml.safe_load(Settings.from_env().topics_file.read_text())
    doc["defaults"]["partitions"] = partitions
    path = tmp / "topics.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
