"""The fault campaign (``omni chaos``): break the workers on purpose under load, then check every invariant.

One input, run twice on one broker: once through a single worker that nothing
disturbs (the clean run), once through several workers on many partitions while
faults hit them every few seconds. Once every partition is owned again and no lag
remains, the two are compared. The faults, by kind:

* ``kill``: SIGKILL a worker and start it again over its state directory;
* ``term``: SIGTERM (a graceful stop, with a last checkpoint) and start again;
* ``stall``: SIGSTOP a worker past the session timeout, then SIGCONT: a zombie;
* ``torn``: restart a worker told to tear its next checkpoint between two state
  partitions' changelog writes (``OMNI_FAULT_TORN_CHECKPOINT``), the narrow window
  a kill hits once in thousands;
* ``stale``: restart a worker whose stores count as stale (``OMNI_STATE_MAX_STALE_S``),
  so they are rebuilt from the changelog;
* ``lost_acks``: the proxy throws away produce acknowledgements (the batches were
  written) and closes the connections;
* ``reset``: the proxy closes every connection;
* ``slow``: the proxy delays every frame for a few seconds;
* ``partition``: the proxy passes nothing for longer than the session timeout;
* ``broker_stall``: SIGSTOP the broker for a while, then SIGCONT.

Every client reaches the broker through the fault proxy (``pipeline.chaos.proxy``):
the embedded broker advertises the proxy's address. The invariants:

1. every input record is consumed and committed, and dead-lettered exactly as in the
   clean run (the same inputs, for the same reasons);
2. no ``action_id`` twice on any action topic, nor one play for one trigger and person twice;
3. every profile (identifiers, counters, purchases, event ids) equals the clean run's;
4. an erasure issued mid-campaign holds: the person is in no profile, no RocksDB
   directory, no latest changelog value and no answer of the API;
5. every RocksDB directory left holds exactly its changelog replayed up to the offset it claims;
6. no worker exits on its own (only by the faults above).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Options, Rdict

from pipeline.actions.catalogue import Catalogue
from pipeline.bench.workers import WorkerProcess, wait_ready
from pipeline.chaos.invariants import (
    comparable, create_topics, dead_lettered, differences, live_profiles, produce_steadily, read_topic, sent_actions,
    topics_with, wait_drained,
)  # fmt: skip
from pipeline.chaos.proxy import PRODUCE, FaultProxy
from pipeline.identity.export import changelog_state
from pipeline.ops.broker import EmbeddedBroker, free_port
from pipeline.ops.topics import CHANGELOG
from pipeline.privacy.requests import request_erasure
from pipeline.runtime.faults import TORN_EXIT
from pipeline.runtime.state.base import OFFSET_KEY, TOPIC_KEY, WRITTEN_AT_KEY
from pipeline.settings import PACKAGE_DATA, Settings
from pipeline.simulate.population import Population, Produced
from pipeline.simulate.produce import produce_all

log = logging.getLogger(__name__)

FAULT_KINDS = ("kill", "term", "stall", "torn", "stale", "lost_acks", "reset", "slow", "partition", "broker_stall")
# How often each kind is drawn: the process faults most, the broker's own stall least (it stops everyone).
WEIGHTS = (4, 2, 3, 2, 1, 3, 2, 1, 1, 1)
EXPECTED_EXITS = {0, -signal.SIGKILL, TORN_EXIT}
ERASED: dict[str, str] = {"customer_id": "CHAOS-ERASE", "email": "chaos.erase@example.com", "phone": "+4520998877"}
TOKEN = "chaos-token"
CLEANUP_DELAY_S = 2.0
HEAL_S = 180.0  # for the group to settle after the last fault; wait_drained adds its own 180 s to catch up


@dataclass
class Campaign:
    workdir: Path
    workers: int = 3
    partitions: int = 12
    load_s: float = 150.0
    rate: float = 300.0
    customers: int = 600
    fault_every_s: float = 5.0
    seed: int = 1
    kinds: tuple[str, ...] = FAULT_KINDS
    say: Callable[[str], None] = print


@dataclass
class Report:
    faults: Counter[str] = field(default_factory=Counter)
    checked: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"faults": dict(self.faults), "faults_total": sum(self.faults.values()), "invariants": self.checked,
                "violations": self.violations, "figures": self.figures}  # fmt: skip


class _ProxyThread:
    """The fault proxy on an event loop of its own, so the campaign can drive it from its plain thread."""

    def __init__(self, target_port: int, listen_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fault-proxy", daemon=True)
        self.thread.start()
        self.proxy = FaultProxy("127.0.0.1", target_port, listen_port=listen_port)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    def do(self, action: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(action, *args)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def run(c: Campaign) -> Report:
    """Run the campaign; the report lists every violation (none is the only pass)."""
    c.workdir.mkdir(parents=True, exist_ok=True)
    report = Report()
    rng = random.Random(c.seed)
    proxy_port = free_port()
    with EmbeddedBroker(Settings.model_validate({}), advertised_port=proxy_port, log_path=c.workdir / "broker.log") as broker:
        proxy = _ProxyThread(broker.port, proxy_port)
        try:
            base = Settings.model_validate({
                "bootstrap": f"127.0.0.1:{proxy_port}", "topics_file": topics_with(c.partitions, c.workdir),
                "catalogue_file": PACKAGE_DATA / "catalogue.demo.yaml", "rules_file": PACKAGE_DATA / "rules.demo.yaml",
                "commit_interval_s": 1.0, "api_token": TOKEN,
            })  # fmt: skip
            records = _input(c, base)
            c.say(f"input: {len(records)} records, {c.customers} customers and one to erase mid-run")
            clean = _clean_run(c, base, records)
            _disturbed_run(c, base, records, clean, broker, proxy, rng, report)
        finally:
            proxy.stop()
    return report


def _input(c: Campaign, base: Settings) -> list[Produced]:
    population = Population(Catalogue.load(base.catalogue_file), customers=c.customers, seed=c.seed, bad_rate=0.01)
    records = list(itertools.islice(population.records(time.time()), int(c.rate * c.load_s)))
    # The person erased mid-run: everything they do comes before the erasure, under their customer id.
    for n, etype in enumerate(("page_view", "product_view", "add_to_cart")):
        raw: dict[str, Any] = {
            "event_id": f"chaos-erase-{n}", "type": etype, "channel": "web", "identifiers": ERASED,
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60 + n)),
            "properties": {"url": "/"} if etype == "page_view" else {"sku": "VAC-100"},
        }  # fmt: skip
        records.insert(len(records) // 10 + n, Produced("channel.web", raw["event_id"].encode(), orjson.dumps(raw)))
    return records


def _clean_run(c: Campaign, base: Settings, records: list[Produced]) -> dict[str, Any]:
    settings = base.model_copy(update={"topic_prefix": "clean.", "state_dir": c.workdir / "clean"})
    create_topics(settings)
    asyncio.run(produce_all(settings, records))
    worker = WorkerProcess.start(settings, c.workdir / "clean.log")
    try:
        started = time.monotonic()
        wait_drained(settings, [worker], len(records))
        asyncio.run(request_erasure(settings, f"customer_id:{ERASED['customer_id']}"))
        _wait_erased(worker)
        time.sleep(2 * settings.commit_interval_s)
        c.say(f"clean run: one worker, {time.monotonic() - started:.0f} s")
    finally:
        worker.stop()
    return {"profiles": comparable(live_profiles(settings), settings), "dead_letters": dead_lettered(settings)}


def _disturbed_run(
    c: Campaign, base: Settings, records: list[Produced], clean: dict[str, Any], broker: EmbeddedBroker,
    proxy: _ProxyThread, rng: random.Random, report: Report,
) -> None:  # fmt: skip
    settings = base.model_copy(update={"topic_prefix": "chaos."})
    create_topics(settings)
    dirs = [c.workdir / f"worker-{n}" for n in range(c.workers)]
    logs = [c.workdir / f"worker-{n}.log" for n in range(c.workers)]

    def start(n: int, env: dict[str, str] | None = None) -> WorkerProcess:
        # Unowned state directories go within seconds, so that the erasure check can ask every directory left.
        env = {"OMNI_STATE_CLEANUP_DELAY_S": str(CLEANUP_DELAY_S), **(env or {})}
        return WorkerProcess.start(settings.model_copy(update={"state_dir": dirs[n]}), logs[n], env=env)

    workers = [start(n) for n in range(c.workers)]
    held: set[int] = set()  # workers a fault holds down or stopped on purpose, not to be restarted by the supervisor
    timers: list[threading.Timer] = []
    try:
        wait_ready(workers, c.partitions)
        half = len(records) // 2

        def produce() -> None:
            asyncio.run(produce_steadily(settings, records[:half], c.load_s / 2))
            asyncio.run(request_erasure(settings, f"customer_id:{ERASED['customer_id']}"))
            asyncio.run(produce_steadily(settings, records[half:], c.load_s / 2))

        producer = threading.Thread(target=produce, name="load")
        producer.start()
        started = time.monotonic()
        while producer.is_alive():
            time.sleep(c.fault_every_s * rng.uniform(0.6, 1.4))
            _supervise(workers, start, held, report, c)
            if not producer.is_alive():
                break
            kind = rng.choices(c.kinds, [WEIGHTS[FAULT_KINDS.index(k)] for k in c.kinds])[0]
            what = _inject(kind, rng, workers, start, held, timers, proxy, broker, settings, c)
            report.faults[kind] += 1
            c.say(f"  {time.monotonic() - started:6.1f}s  {kind:12s} {what}")
        producer.join()
        c.say(f"load done after {time.monotonic() - started:.0f} s; {sum(report.faults.values())} faults; healing")
        for timer in timers:
            timer.cancel()
            timer.function(*timer.args)  # the pending recovery (SIGCONT, resume) now
        held.clear()
        try:
            _heal(settings, workers, start, held, report, c, len(records))
        except (TimeoutError, AssertionError) as exc:  # liveness: the group must settle and catch up once healed
            report.violations.append(f"after healing: {exc}")
            c.say(f"after healing: {exc}; each worker's asyncio tasks are in its log (SIGUSR1)")
            for w in workers:
                if w.alive():
                    w.proc.send_signal(signal.SIGUSR1)  # pipeline.ops.tasks: where each task waits
            time.sleep(2)
        time.sleep(3 * CLEANUP_DELAY_S)  # the directories of partitions that moved are gone
        owned = {n: _owned(w) for n, w in enumerate(workers)}
        api = [_api_status(w, f"customer_id={ERASED['customer_id']}") for w in workers]
    finally:
        for w in workers:
            if w.alive():
                w.proc.send_signal(signal.SIGCONT)
        codes = [w.stop() for w in workers]
    c.say("checking the invariants")
    _check(settings, clean, owned, dirs, api, codes, report)


def _inject(
    kind: str, rng: random.Random, workers: list[WorkerProcess], start: Callable[..., WorkerProcess], held: set[int],
    timers: list[threading.Timer], proxy: _ProxyThread, broker: EmbeddedBroker, settings: Settings, c: Campaign,
) -> str:  # fmt: skip
    n = rng.choice([i for i in range(len(workers)) if i not in held] or [0])
    session_s = settings.session_timeout_ms / 1000
    if kind == "kill":
        workers[n].stop(signal.SIGKILL)
        workers[n] = start(n)
        return f"worker-{n}"
    if kind == "term":
        workers[n].stop(signal.SIGTERM)
        workers[n] = start(n)
        return f"worker-{n}"
    if kind == "torn":
        partition = rng.randrange(c.partitions)
        workers[n].stop(signal.SIGKILL)
        workers[n] = start(n, {"OMNI_FAULT_TORN_CHECKPOINT": str(partition)})
        return f"worker-{n}, restarted to tear its next checkpoint at partition {partition}"
    if kind == "stale":
        workers[n].stop(signal.SIGTERM)
        time.sleep(1.2)
        workers[n] = start(n, {"OMNI_STATE_MAX_STALE_S": "1"})
        return f"worker-{n}, restarted with its stores counted stale"
    if kind == "stall":
        held.add(n)
        worker = workers[n]
        worker.proc.send_signal(signal.SIGSTOP)
        hold = session_s * rng.uniform(1.2, 2.0)

        def wake() -> None:
            worker.proc.send_signal(signal.SIGCONT)
            held.discard(n)

        _later(timers, hold, wake)
        return f"worker-{n} for {hold:.1f}s"
    if kind == "lost_acks":
        count = rng.randint(1, 4)
        proxy.do(proxy.proxy.drop_responses, PRODUCE, count)
        return f"the next {count} produce acknowledgement(s)"
    if kind == "reset":
        proxy.do(proxy.proxy.reset)
        return "every connection"
    if kind == "slow":
        delay = rng.uniform(0.05, 0.3)
        proxy.do(proxy.proxy.delay, delay)
        _later(timers, 3.0, lambda: proxy.do(proxy.proxy.delay, 0.0))
        return f"{delay * 1000:.0f} ms a frame for 3 s"
    if kind == "partition":
        hold = session_s * rng.uniform(0.5, 1.6)
        proxy.do(proxy.proxy.pause)
        _later(timers, hold, lambda: proxy.do(proxy.proxy.resume))
        return f"nothing passes for {hold:.1f}s"
    assert kind == "broker_stall" and broker.proc is not None
    hold = rng.uniform(2.0, session_s * 1.5)
    broker.proc.send_signal(signal.SIGSTOP)
    _later(timers, hold, lambda: broker.proc.send_signal(signal.SIGCONT))  # type: ignore[union-attr]
    return f"for {hold:.1f}s"


def _later(timers: list[threading.Timer], seconds: float, action: Callable[[], object]) -> None:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    timers.append(timer)


def _heal(
    settings: Settings, workers: list[WorkerProcess], start: Callable[..., WorkerProcess], held: set[int],
    report: Report, c: Campaign, produced: int,
) -> None:  # fmt: skip
    """Until the group owns every partition and has caught up with the input.

    A fault armed before the load ended may still stop a worker now (a torn checkpoint fires
    at the worker's next checkpoint): it is started again, as during the load. Without this a
    worker the campaign itself told to exit counted as the group failing to settle, and the
    comparison ran against a group that had not caught up.
    """
    deadline = time.monotonic() + HEAL_S
    while True:
        _supervise(workers, start, held, report, c)
        try:
            wait_ready(workers, c.partitions, timeout_s=max(1.0, deadline - time.monotonic()))
            wait_drained(settings, workers, produced)
            return
        except (RuntimeError, AssertionError) as exc:
            if all(w.alive() for w in workers) or time.monotonic() > deadline:
                raise AssertionError(str(exc)) from None


def _supervise(
    workers: list[WorkerProcess], start: Callable[..., WorkerProcess], held: set[int], report: Report, c: Campaign
) -> None:
    """Start again every worker that exited; one that exited by itself, not by a fault, is a violation."""
    for n, w in enumerate(workers):
        if n in held or w.alive():
            continue
        code = w.proc.returncode
        if code not in EXPECTED_EXITS:
            report.violations.append(f"worker-{n} exited by itself with code {code}; its log ends: {_tail(w.log)}")
        workers[n] = start(n)


def _check(
    settings: Settings, clean: dict[str, Any], owned: dict[int, list[int]], dirs: list[Path], api: list[int],
    codes: list[int], report: Report,
) -> None:  # fmt: skip
    v = report.violations

    report.checked.append("every input consumed and committed; dead letters as in the clean run")
    got_dead = dead_lettered(settings)
    if got_dead != clean["dead_letters"]:
        v.append(f"dead letters differ: {dict(got_dead)} against the clean run's {dict(clean['dead_letters'])}")

    report.checked.append("no action_id twice, nor one action of a play for one trigger and person twice")
    actions = sent_actions(settings)
    ids = Counter(a["action_id"] for a in actions)
    v.extend(f"action {a} sent {n} times" for a, n in ids.items() if n > 1)
    live = live_profiles(settings)
    person = {f"{k}:{x}": pid for pid, p in live.items() for k, xs in p["identifiers"].items() for x in xs}
    causes = Counter(
        (a["rule"], a["action"], person.get(a["customer"], a["customer"]), tuple(a["trigger_event_ids"])) for a in actions
    )  # a play may send two actions for one trigger (pickup ready, then a reminder): not one action twice
    v.extend(f"{rule}/{action} for {who} on {trigger} sent {n} times" for (rule, action, who, trigger), n in causes.items() if n > 1)

    report.checked.append("every profile equals the clean run's")
    v.extend(f"profile {d}" for d in differences(comparable(live, settings), clean["profiles"]))

    report.checked.append("the erasure holds: no profile, RocksDB value, latest changelog value or API answer")
    needles = [value.encode() for value in ERASED.values()]
    latest = asyncio.run(changelog_state(settings))
    for p, store in enumerate(latest):
        v.extend(f"changelog partition {p} still holds {key!r}" for key, raw in store.items(b"") if _mentions(key + raw, needles))
    for d in dirs:
        for path in sorted(d.glob("state-*")):
            for key, raw in _rocksdb(path).items():
                if _mentions(key + raw, needles):
                    v.append(f"{path} still holds {key!r}")
    v.extend(f"worker-{n}'s API answered {status} for the erased customer" for n, status in enumerate(api) if status != 404)

    report.checked.append("every RocksDB directory left holds exactly its changelog up to the offset it claims")
    log_records = asyncio.run(read_topic(settings, CHANGELOG))
    for d in dirs:
        for path in sorted(d.glob("state-*")):
            v.extend(_store_matches_changelog(path, int(path.name.removeprefix("state-")), log_records))

    report.checked.append("no worker exited by itself; each stopped cleanly at the end")
    v.extend(f"worker-{n} stopped with code {code}" for n, code in enumerate(codes) if code != 0)
    report.figures.update(actions=len(ids), profiles=len(live), partitions_owned={f"worker-{n}": ps for n, ps in owned.items()})


def _store_matches_changelog(path: Path, partition: int, log_records: list[Any]) -> list[str]:
    """A store is a prefix of its changelog: what replaying the partition up to the store's offset gives.

    Not the whole changelog: a directory left by a worker the partition moved away from is
    behind it, rightly (it catches up, or is rebuilt, when it comes back).
    """
    db = Rdict(str(path), options=Options(raw_mode=True))
    try:
        raw_offset = db.get(OFFSET_KEY)
    finally:
        db.close()
    if raw_offset is None:
        return []  # never written: a partition opened and closed before its first checkpoint
    upto = int(raw_offset)
    replayed: dict[bytes, bytes] = {}
    for r in log_records:
        if r.partition == partition and r.offset <= upto:
            if r.value is None:
                replayed.pop(r.key, None)
            else:
                replayed[r.key] = r.value
    local = _rocksdb(path)
    if local.keys() != replayed.keys():
        only_local, only_log = sorted(local.keys() - replayed.keys()), sorted(replayed.keys() - local.keys())
        return [f"{path} (at offset {upto}): {len(only_local)} keys only in RocksDB (e.g. {only_local[:3]}), "
                f"{len(only_log)} only in the changelog (e.g. {only_log[:3]})"]  # fmt: skip
    return [f"{path}: {k!r} differs from the changelog's" for k in local if orjson.loads(local[k]) != orjson.loads(replayed[k])]


def _owned(worker: WorkerProcess) -> list[int]:
    health = worker.health() or {}
    return [int(p) for p in health.get("state_partitions", [])]  # type: ignore[attr-defined]


def _rocksdb(path: Path) -> dict[bytes, bytes]:
    db = Rdict(str(path), options=Options(raw_mode=True))
    try:
        return {k: v for k, v in db.items() if isinstance(k, bytes) and k not in (OFFSET_KEY, TOPIC_KEY, WRITTEN_AT_KEY)}
    finally:
        db.close()


def _mentions(raw: bytes, needles: list[bytes]) -> bool:
    return any(needle in raw for needle in needles)


def _wait_erased(worker: WorkerProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.metrics().get("omni_erasures_total", 0) < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the clean run's erasure was not carried out")
        time.sleep(0.2)


def _api_status(worker: WorkerProcess, query: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.port}/profiles?{query}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


def _tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].replace("\n", " | ")
    except OSError:
        return "(no log)"
