"""``omni``: one command line for the pipeline.

    omni run                     broker + topics + worker + simulator + live view (what `make run` does)
    omni broker                  the embedded Kafka-compatible broker, in the foreground
    omni topics apply            create the topics in topics.yaml; exit 1 on drift
    omni worker                  the stream worker
    omni collect [--port P]      HTTP collector: Segment's tracking API in, events on the channel topics
    omni simulate                synthetic customers producing to the channel topics
    omni watch                   the live view of next-best-actions
    omni bench                   throughput, latency, memory and recovery, against raw aiokafka and Quix Streams
    omni rules check [FILE]      validate a rules catalogue and list its rules
    omni send email              the reference sender: actions.email over SMTP, outcomes reported back
    omni send webhook            POST actions to HTTP destinations (signed, retried), outcomes reported back
    omni report [--url U]        what each play earns: the table, and report.html with charts
    omni measure evaluate        the report checked against a simulated world with known effects
    omni soak [--rate R]         a worker under steady load; memory and lag sampled every 10 s
    omni chaos [--minutes M]     the fault campaign: workers killed, stalled, cut off under load; every invariant checked
    omni privacy export --identifier T:V   everything held about a person, as JSON
    omni privacy erase --identifier T:V    request a person's erasure (privacy.requests)
    omni schemas [--check]       write (or check) schemas/ from the pydantic models
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from pipeline.settings import PACKAGE_DATA, PROJECT_ROOT, Settings

CATALOGUES = {"default": PACKAGE_DATA / "catalogue.yaml", "demo": PACKAGE_DATA / "catalogue.demo.yaml"}
RULES = {"default": PACKAGE_DATA / "rules.yaml", "demo": PACKAGE_DATA / "rules.demo.yaml"}


def _settings(**overrides: object) -> Settings:
    """Settings from the environment, with the command-line options that were given on top."""
    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


def _need_bootstrap(settings: Settings) -> Settings:
    if not settings.bootstrap:
        sys.exit("set KAFKA_BOOTSTRAP=host:port (or use `omni run`, which starts the embedded broker)")
    return settings


def _positive(text: str) -> float:
    """An argparse type: a number above zero (a batch every 0 ms would divide by zero)."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above zero")
    return value


def _catalogue_path(name: str | None) -> Path | None:
    if name is None:
        return None
    return CATALOGUES.get(name, Path(name))


def _rules_path(name: str | None) -> Path | None:
    if name is None:
        return None
    return RULES.get(name, Path(name))


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cmd_broker(args: argparse.Namespace) -> None:
    from pipeline.ops.broker import EmbeddedBroker

    with EmbeddedBroker(Settings.from_env(), port=args.port) as broker:
        print(f"broker listening: KAFKA_BOOTSTRAP={broker.bootstrap} (in memory: data is lost when it stops)", flush=True)
        asyncio.run(_until_signal())


def cmd_topics(args: argparse.Namespace) -> None:
    from pipeline.ops.topics import apply_topics, load_topics

    settings = _need_bootstrap(_settings())
    specs = load_topics(settings.topics_file)
    drift = asyncio.run(apply_topics(settings, specs))
    for line in drift:
        print(f"drift: {line}", file=sys.stderr)
    if drift:
        sys.exit(1)
    print(f"{len(specs)} topics in place")


def cmd_worker(args: argparse.Namespace) -> None:
    from pipeline.actions.catalogue import Catalogue
    from pipeline.actions.rules import RulesCatalogue, RulesError
    from pipeline.engine.app import QuietWorker, create_app

    settings = _need_bootstrap(
        _settings(
            catalogue_file=_catalogue_path(args.catalogue), rules_file=_rules_path(args.rules),
            state_dir=args.state_dir, web_port=args.web_port,
        )
    )  # fmt: skip
    try:
        RulesCatalogue.load(settings.rules_file)  # refused before anything starts, with the rule and field named
    except RulesError as exc:
        sys.exit(f"bad rules catalogue: {exc}")
    catalogue = Catalogue.load(settings.catalogue_file)
    app = create_app(settings, catalogue)
    from pipeline import hot_path_compiled

    print(f"metrics: {settings.web_url}/metrics", flush=True)
    print(f"hot path: {'compiled' if hot_path_compiled() else 'interpreted (run `make build` to compile it)'}", flush=True)
    QuietWorker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


def cmd_collect(args: argparse.Namespace) -> None:
    from pipeline.collect.app import build_collector, create_app
    from pipeline.collect.segment import MappingError
    from pipeline.collect.sources import SourcesError
    from pipeline.engine.app import QuietWorker

    settings = _need_bootstrap(
        _settings(collect_port=args.port, collect_host=args.host, collect_sources_file=args.sources, collect_mapping_file=args.mapping)
    )
    try:
        collector = build_collector(settings)  # refused before anything starts, with the file and field named
    except (SourcesError, MappingError) as exc:
        sys.exit(f"bad collector configuration: {exc}")
    app = create_app(settings, collector)
    channels = sorted({s.channel for s in collector.sources.by_key.values()})
    print(f"collecting: http://{settings.collect_host}:{settings.collect_port}/v1/ (sources for {', '.join(channels)})", flush=True)
    QuietWorker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


def cmd_send(args: argparse.Namespace) -> None:
    if args.channel == "webhook":
        return cmd_send_webhook(args)
    from pipeline.senders.email import EmailSender

    settings = _need_bootstrap(_settings(smtp_host=args.smtp_host, smtp_port=args.smtp_port, mail_from=args.mail_from,
                                         sender_state_dir=args.state_dir))  # fmt: skip
    sender = EmailSender(settings, (settings.smtp_host, settings.smtp_port), settings.mail_from, settings.sender_state_dir)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sender.stopping.set)
        await sender.run()

    print(f"sending {settings.topic('actions.email')} through {settings.smtp_host}:{settings.smtp_port}", flush=True)
    asyncio.run(main())
    print(f"stopped; this run: {sender.counts}")


def cmd_send_webhook(args: argparse.Namespace) -> None:
    from prometheus_client import start_http_server

    from pipeline.senders.webhook import ConfigError, WebhookSender, load_config, topics_of

    settings = _need_bootstrap(_settings(webhook_destinations_file=args.config, webhook_state_dir=args.state_dir,
                                         webhook_metrics_port=args.metrics_port))  # fmt: skip
    try:
        config = load_config(settings.webhook_destinations_file)
    except ConfigError as exc:
        sys.exit(f"bad webhook configuration: {exc}")
    sender = WebhookSender(settings, config, settings.webhook_state_dir)
    if settings.webhook_metrics_port:
        start_http_server(settings.webhook_metrics_port, registry=sender.metrics.registry)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sender.stopping.set)
        await sender.run()

    names = ", ".join(d.name for d in config.destinations)
    print(f"sending {', '.join(settings.topic(t) for t in topics_of(config))} to {names}", flush=True)
    asyncio.run(main())
    print(f"stopped; this run: {sender.counts}")


def cmd_report(args: argparse.Namespace) -> None:
    from pipeline.measure.report import fetch, page, table

    settings = _settings()
    url = args.url or settings.web_url
    try:
        stats = fetch(url, settings.auth_headers, settings.web_client_ssl())
    except OSError as exc:
        sys.exit(f"no worker answered at {url}/rules/stats: {exc}")
    print(table(stats))
    Path(args.html).write_text(page(stats), encoding="utf-8")
    print(f"\nwrote {args.html} (open it in a browser; it needs no network)")
    if any(r["negative"] for r in stats["rules"]):
        sys.exit(2)  # a rule that hurts: scripts and CI notice


def cmd_measure(args: argparse.Namespace) -> None:
    from pipeline.measure.evaluate import main

    recovered = main(args.customers_per_play, Path(args.out) if args.out else None, Path(args.html) if args.html else None)
    if not recovered:
        sys.exit("some true effect lies outside its 95 % interval (expected now and then: 1 in 20 per play)")


def cmd_soak(args: argparse.Namespace) -> None:
    from pipeline.ops.soak import soak

    result = soak(args.rate, args.minutes, args.customers, batch_ms=args.batch_ms)
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"RSS growth (last third over middle third) {result['rss_growth']}, worst lag in the last third "
          f"{result['worst_lag_last_third']} records")  # fmt: skip
    if not (result["memory_bounded"] and result["lag_bounded"] and result["worker_alive_at_end"]):
        sys.exit("memory or lag grew without bound, or the worker died")


def cmd_chaos(args: argparse.Namespace) -> None:
    import tempfile

    from pipeline.chaos.campaign import FAULT_KINDS, Campaign, run

    if args.bootstrap_set:
        sys.exit("omni chaos starts its own broker behind its fault proxy: unset KAFKA_BOOTSTRAP")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="omni-chaos-"))
    campaign = Campaign(
        workdir=workdir, workers=args.workers, partitions=args.partitions, load_s=args.minutes * 60, rate=args.rate,
        customers=args.customers, fault_every_s=args.fault_every, seed=args.seed,
        kinds=tuple(args.faults.split(",")) if args.faults else FAULT_KINDS,
    )  # fmt: skip
    unknown = set(campaign.kinds) - set(FAULT_KINDS)
    if unknown:
        sys.exit(f"--faults: unknown kind(s) {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    print(f"omni chaos: {args.workers} workers, {args.partitions} partitions, {args.minutes:g} min of load at "
          f"{args.rate:g} events/s, a fault every {args.fault_every:g} s; logs in {workdir}", flush=True)  # fmt: skip
    started = time.monotonic()
    report = run(campaign)
    result = {**report.as_json(), "seconds": round(time.monotonic() - started, 1)}
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"faults injected: {result['faults_total']} ({', '.join(f'{k} {n}' for k, n in sorted(report.faults.items()))})")
    for name in report.checked:
        print(f"  checked: {name}")
    for violation in report.violations[:200]:
        print(f"  VIOLATION: {violation}")
    if report.violations:
        sys.exit(f"{len(report.violations)} violation(s)")
    print("no violations")


def cmd_rules(args: argparse.Namespace) -> None:
    from pipeline.actions.rules import RulesCatalogue, RulesError

    path = _rules_path(args.file) or _settings().rules_file
    try:
        catalogue = RulesCatalogue.load(path)
    except RulesError as exc:
        sys.exit(f"bad rules catalogue: {exc}")
    for name, rule in catalogue.rules.items():
        print(f"{name:24} {rule.play:22} {rule.kind:13} {'on' if rule.enabled else 'off':3} {', '.join(rule.channels)}")


def cmd_simulate(args: argparse.Namespace) -> None:
    from pipeline.actions.catalogue import Catalogue
    from pipeline.simulate.population import Population
    from pipeline.simulate.produce import simulate

    settings = _need_bootstrap(_settings(catalogue_file=_catalogue_path(args.catalogue)))
    population = Population(Catalogue.load(settings.catalogue_file), args.customers, args.seed, args.bad_rate)

    async def main() -> int:
        task = asyncio.create_task(simulate(settings, population, args.rate, args.duration, tick=args.batch_ms / 1000))
        stopper = asyncio.create_task(_until_signal())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        return population.seq

    total = asyncio.run(main())
    print(f"simulator: stopped after {total} events", file=sys.stderr)


def cmd_watch(args: argparse.Namespace) -> None:
    from pipeline.ops.watch import watch

    settings = _need_bootstrap(_settings())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await watch(settings, args.metrics_url, stop=stop)

    asyncio.run(main())


def cmd_identity(args: argparse.Namespace) -> None:
    from pipeline.identity.export import as_json_lines, graph_entries

    if args.action == "evaluate":
        from pipeline.identity.evaluate import evaluate

        result = evaluate(args.people, args.workers, args.partitions, log=lambda line: print(line, file=sys.stderr))
        if args.out:
            Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print(orjson.dumps(result).decode())
        return
    settings = _need_bootstrap(_settings())
    if args.action == "split":
        from pipeline.identity.split import request_split

        if not args.profile or not args.identifier:
            sys.exit("usage: omni identity split PROFILE --identifier TYPE:VALUE")
        identifier = asyncio.run(request_split(settings, args.profile, args.identifier))
        print(f"split of {identifier} from {args.profile} requested; identity.merges records it when done", file=sys.stderr)
        return
    entries = asyncio.run(graph_entries(settings))
    out = open(args.out, "wb") if args.out else sys.stdout.buffer
    try:
        out.writelines(as_json_lines(entries))
    finally:
        if args.out:
            out.close()
    print(f"identity graph: {len(entries)} identifiers, {len({e['profile_id'] for e in entries})} profiles", file=sys.stderr)


def cmd_privacy(args: argparse.Namespace) -> None:
    settings = _need_bootstrap(_settings())
    if args.action == "export":
        from pipeline.privacy.export import export_person

        person = asyncio.run(export_person(settings, args.identifier))
        print(orjson.dumps(person, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        if not person["found"]:
            print(f"nothing is held about {args.identifier}", file=sys.stderr)
        return
    from pipeline.privacy.requests import request_erasure

    request_id = asyncio.run(request_erasure(settings, args.identifier, args.request_id))
    print(f"erasure {request_id} requested; privacy.audit records it when done", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> None:
    from pipeline.ops.run import run_all

    sys.exit(run_all(Settings.from_env(), rate=args.rate, customers=args.customers))


def cmd_bench(args: argparse.Namespace) -> None:
    from pipeline.bench.run import latency_at, run_bench

    if args.latency_at:
        print(latency_at(Settings.from_env(), args.latency_at))
    elif args.job_path:
        from pipeline.bench.jobpath import job_path

        print(job_path(Settings.from_env(), args.job_path, args.events, args.checkpoint_every))
    else:
        run_bench(Settings.from_env(), events=args.events, out=Path(args.out), profiles=args.profiles)


def cmd_schemas(args: argparse.Namespace) -> None:
    from pipeline.ops.schemas import check_schemas, write_schemas

    if args.check:
        stale = check_schemas(PROJECT_ROOT / "schemas")
        if stale:
            sys.exit(f"schemas/ is stale, run `omni schemas`: {', '.join(stale)}")
        print("schemas/ matches the models")
    else:
        for path in write_schemas(PROJECT_ROOT / "schemas"):
            print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="everything, with a live view (Ctrl-C stops it all)")
    p.add_argument("--rate", type=float, default=150.0, help="simulated events per second")
    p.add_argument("--customers", type=int, default=300)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("broker", help="run the embedded broker")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="manage topics")
    p.add_argument("action", choices=["apply"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run a stream worker")
    p.add_argument("--catalogue", help="'default', 'demo' or a YAML path")
    p.add_argument("--rules", help="the rules catalogue: 'default', 'demo' or a YAML path (re-read when it changes)")
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--web-port", type=int, default=None)
    p.add_argument("--loglevel", default="warning")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("collect", help="HTTP collector for Segment's tracking API (track, identify, page, ..., batch)")
    p.add_argument("--port", type=int, default=None, help="default OMNI_COLLECT_PORT (8088)")
    p.add_argument("--host", default=None, help="address to listen on (default OMNI_COLLECT_HOST, 127.0.0.1)")
    p.add_argument("--sources", type=Path, default=None, help="YAML of sources: write keys and channels")
    p.add_argument("--mapping", type=Path, default=None, help="YAML mapping Segment calls to our event types")
    p.add_argument("--loglevel", default="warning")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("simulate", help="produce synthetic customer traffic")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=None, help="seconds; default runs until stopped")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bad-rate", type=float, default=0.0, help="share of deliberately broken records")
    p.add_argument("--batch-ms", type=_positive, default=50.0, help="one batch per partition this often")
    p.add_argument("--catalogue", help="'default', 'demo' or a YAML path")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("watch", help="live view of next-best-actions")
    p.add_argument("--metrics-url", default=None, help="a worker's /metrics for the pulse line")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("identity", help="the identity graph")
    p.add_argument("action", choices=["export", "split", "evaluate"], help="export: every identifier and its "
                   "profile, as JSON lines; split: undo a wrong merge; evaluate: run a simulated population "
                   "through the pipeline and score the graph")  # fmt: skip
    p.add_argument("profile", nargs="?", help="split: the profile (any id it ever had)")
    p.add_argument("--identifier", help="split: TYPE:VALUE to separate, with what came in with it")
    p.add_argument("--out", default=None, help="file to write (default: standard output)")
    p.add_argument("--people", type=int, default=5000, help="evaluate: people in the population")
    p.add_argument("--workers", type=int, default=2, help="evaluate: worker processes")
    p.add_argument("--partitions", type=int, default=8, help="evaluate: state partitions")
    p.set_defaults(func=cmd_identity)

    p = sub.add_parser("privacy", help="a person's data: export it, or request its erasure")
    p.add_argument("action", choices=["export", "erase"], help="export: everything held about the person, as JSON "
                   "(from the changelog); erase: send an erasure request to privacy.requests")  # fmt: skip
    p.add_argument("--identifier", required=True, help="any of the person's identifiers, TYPE:VALUE")
    p.add_argument("--request-id", default=None, help="erase: the request's id (default: a new one)")
    p.set_defaults(func=cmd_privacy)

    p = sub.add_parser("bench", help="throughput benchmark")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--profiles", type=int, default=1_000_000, help="profiles for the memory and recovery figures (0 skips)")
    p.add_argument("--latency-at", type=float, default=None, metavar="RATE", help="only measure latency at this rate")
    p.add_argument("--job-path", choices=["backlog", "live"], default=None,
                   help="only the job's own path, no broker: CPU per event on that traffic (pipeline/bench/jobpath.py)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=10_000, metavar="N",
                   help="--job-path: encode and write the changed state every N events (a worker does it every 5 s)")  # fmt: skip
    p.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results.json"))
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("send", help="a reference sender: deliver an action topic and report outcomes")
    p.add_argument("channel", choices=["email", "webhook"])
    p.add_argument("--config", type=Path, default=None, help="webhook: the destinations file (docs/webhooks.md)")
    p.add_argument("--metrics-port", type=int, default=None, help="webhook: serve /metrics on this port")
    p.add_argument("--smtp-host", default=None)
    p.add_argument("--smtp-port", type=int, default=None)
    p.add_argument("--mail-from", default=None)
    p.add_argument("--state-dir", type=Path, default=None, help="where delivered action ids are remembered")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("report", help="what each play earns: per-rule table and an HTML page with charts")
    p.add_argument("--url", default=None, help="any worker's web address (default: this machine's OMNI_WEB_PORT)")
    p.add_argument("--html", default="report.html", help="where to write the page")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("measure", help="check the report against a simulated world with known effects")
    p.add_argument("action", choices=["evaluate"])
    p.add_argument("--customers-per-play", type=int, default=1000)
    p.add_argument("--out", default=None, help="JSON with the figures and verdicts")
    p.add_argument("--html", default=None, help="the report page for the run")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("soak", help="a worker under steady load for minutes; memory and lag sampled every 10 s")
    p.add_argument("--rate", type=float, default=3000.0, help="events a second")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--batch-ms", type=_positive, default=500.0, help="the simulator sends one batch per partition this often")
    p.add_argument("--out", default=None, help="JSON with the samples")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("chaos", help="the fault campaign: faults under load, then every invariant against a clean run")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--minutes", type=float, default=2.5, help="of load, faults injected all along")
    p.add_argument("--rate", type=float, default=300.0, help="events a second")
    p.add_argument("--customers", type=int, default=600)
    p.add_argument("--fault-every", type=_positive, default=5.0, help="seconds between faults, on average")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", default=None, help="the kinds to inject, comma-separated (default: every kind)")
    p.add_argument("--workdir", default=None, help="logs and state directories (default: a new temporary one)")
    p.add_argument("--out", default=None, help="JSON with the faults, the invariants and every violation")
    p.set_defaults(func=cmd_chaos, bootstrap_set=bool(os.environ.get("KAFKA_BOOTSTRAP")))

    p = sub.add_parser("rules", help="the rules catalogue")
    p.add_argument("action", choices=["check"], help="check: validate a rules file without starting anything")
    p.add_argument("file", nargs="?", default=None, help="'default', 'demo' or a YAML path")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("schemas", help="JSON Schema from the pydantic models")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
