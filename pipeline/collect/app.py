"""The collector process: a Faust app whose web server answers Segment's tracking API.

As the worker does, it uses Faust for what Faust is good at here: the process lifecycle (signals,
graceful stop, logging), the web server (aiohttp, with CORS for pages that call it from the
browser) and the service that owns the producer. It runs in producer-only mode: no consumer, no
agents, no tables; each request produces its own records through the project's producer and
waits for their acknowledgement (``pipeline.collect.server``). It keeps no state, so any number
run behind a load balancer.
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types.web import ResourceOptions
from mode import Service
from prometheus_client import generate_latest

from pipeline.collect.segment import Mapping, Translator
from pipeline.collect.server import Collector, CollectMetrics
from pipeline.collect.sink import KafkaSink
from pipeline.collect.sources import Sources
from pipeline.engine.app import METRICS_CONTENT_TYPE
from pipeline.ingest.validate import Validator
from pipeline.ops.topics import load_topics
from pipeline.runtime import kafka
from pipeline.settings import Settings


class ProducerService(Service):
    """Starts the producer before the first call can be answered, and flushes it on the way out."""

    def __init__(self, settings: Settings, collector: Collector, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.collector = collector
        self.producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        self.producer = kafka.producer(self.settings)  # on the running loop
        await self.producer.start()
        self.collector.sink = KafkaSink(self.settings, self.producer, load_topics(self.settings.topics_file))

    async def on_stop(self) -> None:
        self.collector.sink = None  # calls arriving now get 503 and are sent again
        if self.producer is not None:
            await self.producer.stop()


def build_collector(settings: Settings) -> Collector:
    """The collector for the configured sources and mapping (either file failing to load raises, naming the field)."""
    sources = Sources.load(settings.collect_sources_file)
    translator = Translator(Mapping.load(settings.collect_mapping_file), Validator(settings))
    return Collector(settings, sources, translator, metrics=CollectMetrics())


def create_app(settings: Settings, collector: Collector) -> faust.App:
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # Faust makes its (unused) data directory in it
    app = faust.App(
        f"{settings.topic_prefix}{settings.app_id}-collect",
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        datadir=str(settings.state_dir / "faust-collect"),
        autodiscover=False,
        web_enabled=True,
        web_bind=settings.collect_host,
        web_host=settings.collect_host,
        web_port=settings.collect_port,
    )
    app.producer_only = True
    app.service(ProducerService(settings, collector, loop=None))  # type: ignore[arg-type]
    # analytics.js posts from the shop's pages (another origin) with an Authorization header: a preflight each.
    cors = {
        origin: ResourceOptions(allow_headers="*", allow_methods=["POST"], max_age=3600)
        for origin in sorted(settings.collect_cors_origins)
    }

    @app.page("/v1/{call}", cors_options=cors)
    class Calls(faust.web.View):
        async def post(self, request: faust.web.Request, call: str) -> faust.web.Response:
            return await collector.handle(request, call)  # type: ignore[arg-type,return-value]  # aiohttp's, under Faust's names

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return self.bytes(generate_latest(collector.metrics.registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/health")
    async def health_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ready = collector.sink is not None
        return self.json({"ready": ready}, status=200 if ready else 503)

    return app
