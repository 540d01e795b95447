"""The worker process: a Faust app around the engine.

Faust provides what it is good at: the worker lifecycle (signals, graceful
stop, logging), the web server for ``/metrics``, ``/health`` and the profile
API, and the service tree. The per-event hot path does not go through Faust's
consumer or tables: measured on this machine, a Faust agent doing one table
write and one send per event ran about 3,300 events/s, and even an agent that
only parses stays near 15,000. The engine (``loop.py``) runs as a Faust service
with its own batched aiokafka consumer and RocksDB stores.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import faust
from faust.worker import Worker
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.lookup import HOPS_HEADER, MAX_HOPS, ProfileLookup
from pipeline.engine.omnichannel import omnichannel_engine
from pipeline.engine.rulestats import RuleStats
from pipeline.ops.metrics import Metrics
from pipeline.ops.tasks import install_task_dump
from pipeline.runtime.engine import Engine
from pipeline.settings import Settings

log = logging.getLogger(__name__)
# aiohttp takes the charset separately; Prometheus' text format is UTF-8 either way.
METRICS_CONTENT_TYPE = ";".join(p for p in CONTENT_TYPE_LATEST.split(";") if "charset" not in p)


class QuietWorker(Worker):
    """Faust's worker without its terminal spinner.

    To spin once per log record, the spinner sets the root logger to DEBUG whatever
    ``--loglevel`` says, so every debug call in aiokafka and ours built a record and
    looked up its caller's source file: sampled at 1,000 events/s, 18 % of the worker's
    time went to ``Logger.debug``.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None  # and the root logger keeps the level it was given


class EngineService(Service):
    """Runs the engine's loop as a task; stopping drains it and takes a last checkpoint."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self._loop_done = asyncio.Event()

    async def on_start(self) -> None:
        install_task_dump(asyncio.get_running_loop())  # kill -USR1: where is each task waiting?
        await self.engine.start()

    @Service.task
    async def _run_engine(self) -> None:
        # An exception here crashes the service, and with it the worker (mode's
        # task supervision): a worker that cannot make progress must not look alive.
        try:
            await self.engine.run()
        finally:
            self._loop_done.set()

    async def on_stop(self) -> None:
        self.engine.stopping.set()
        try:
            await asyncio.wait_for(self._loop_done.wait(), timeout=10)
        except asyncio.TimeoutError:
            log.warning("engine loop did not finish within 10 s; stopping anyway")
        await self.engine.stop()


def _hops(request: faust.web.Request) -> int:
    try:
        return int(request.headers.get(HOPS_HEADER, "0"))
    except ValueError:
        return MAX_HOPS  # a garbled count is answered here, not passed on


def _authorised(settings: Settings, request: faust.web.Request) -> bool:
    """The profile and rule APIs and /metrics/business carry personal data or business figures: a bearer
    token, always.

    With no token configured nobody is let in (secure by default); /metrics and /health stay open,
    since they carry neither (``pipeline/ops/metrics.py`` says which figure goes where).
    """
    expected = settings.api_token
    given = request.headers.get("Authorization", "")
    return bool(expected) and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


def create_app(settings: Settings, catalogue: Catalogue, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
    engine = omnichannel_engine(settings, catalogue, metrics)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}{settings.app_id}-worker",
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        # Faust makes a data directory even with no tables of its own: under the state directory,
        # not "<app>-data" in whatever directory the worker was started from.
        datadir=str(settings.state_dir / "faust"),
        autodiscover=False,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_ssl_context=settings.web_server_ssl(),  # https: peers and callers reach it over TLS only
    )
    # Producer-only: Faust starts its web server and producer but no consumer. The engine
    # has its own; a second, idle consumer group would add a join (about 3 s on Tansu)
    # to every start and a fetch thread contending for the GIL (measured: 9 % of samples).
    app.producer_only = True
    app.engine = engine  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    service = EngineService(engine, loop=None)
    app.service(service)  # type: ignore[arg-type]

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return self.bytes(generate_latest(metrics.registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/metrics/business")
    async def business_metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Per-rule conversions, revenue and outcomes (``omni_rule``), for a Prometheus that holds the token."""
        if not _authorised(settings, request):
            return self.json({"error": "missing or wrong bearer token (OMNI_API_TOKEN)"}, status=401)
        return self.bytes(generate_latest(metrics.business), content_type=METRICS_CONTENT_TYPE)

    @app.page("/health")
    async def health_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ready = engine.ready.is_set()
        body = {"ready": ready, "state_partitions": sorted(engine.state), "records_done": metrics.records_done()}
        return self.json(body, status=200 if ready else 503)

    lookup = ProfileLookup(engine, settings.default_phone_region)

    @app.page("/profiles")
    async def profile_lookup(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """``/profiles?email=anna@example.dk`` (any identifier type) or ``/profiles?id=customer_id:C1``."""
        if not _authorised(settings, request):
            return self.json({"error": "missing or wrong bearer token (OMNI_API_TOKEN)"}, status=401)
        status, body = await lookup.answer(request.query, _hops(request))
        return self.json(body, status=status)

    rule_stats = RuleStats(engine)

    @app.page("/rules/stats")
    async def rules_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Per rule: sent, held out, suppressed by reason, outcomes, conversions, uplift (``?local=1``: this worker's)."""
        if not _authorised(settings, request):
            return self.json({"error": "missing or wrong bearer token (OMNI_API_TOKEN)"}, status=401)
        return self.json(rule_stats.local() if request.query.get("local") else await rule_stats.everywhere())

    @app.page("/profiles/{key}")
    async def profile_page(self: faust.web.View, request: faust.web.Request, key: str) -> faust.web.Response:
        if not _authorised(settings, request):
            return self.json({"error": "missing or wrong bearer token (OMNI_API_TOKEN)"}, status=401)
        status, body = await lookup.by_id(key, _hops(request))
        return self.json(body, status=status)

    return app
