"""The collector's HTTP side: Segment's tracking endpoints in, events and dead letters out.

Each request is answered only after the broker has acknowledged every record it produced (its
events, and the dead letters of whatever in it was refused), so a 200 means the calls are in
Kafka and anything else means the SDK should keep them (it retries 5xx and gives up on 4xx):

* 200: every call is an event on its channel topic, or was dead-lettered as ``unmapped_event``
  (the caller did nothing wrong; the mapping file lacks the event).
* 400: a call the caller got wrong; the JSON answer names the field (``batch[3].properties.price``).
  In a batch the good calls are produced, and each bad one is dead-lettered with its reason.
* 401: no write key, or one no source has. 413: larger than Segment's limits (32 KB a call,
  500 KB a batch, 32 KB each call in a batch). 404: not an endpoint.
* 503: the broker did not acknowledge in time (``OMNI_COLLECT_ACK_TIMEOUT_S``); nothing is
  dead-lettered, since the SDK sends the calls again. Records the broker took after the deadline
  are written twice by the retry, and applied once: the ``messageId`` is the ``event_id``.

The original body of every refused request goes to ``deadletter`` with its reason: the exact bytes
received (gzip undone) for a whole request, each refused message's JSON for one call of a batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram

from pipeline.collect.segment import CALLS, PATHS, PROCESSING_ERROR, Mapped, Refused, Translator
from pipeline.collect.sink import Out, Sink
from pipeline.collect.sources import Source, Sources, basic_auth_user
from pipeline.settings import Settings

log = logging.getLogger(__name__)

DEADLETTER = "deadletter"
MAX_KEPT = 900_000  # as pipeline.engine.deadletter.MAX_VALUE: what a dead letter keeps of a body
MAX_ERRORS = 50  # errors listed in one answer (a batch can have hundreds)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    close: bool = False  # the connection too: after a body aiohttp could not read, nothing else on it can be


UNAVAILABLE = Answer(503, {"success": False, "code": "unavailable", "message": "the broker did not acknowledge in time; send the calls again"})


class CollectMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("omni_collect_requests", "HTTP calls answered", ["call", "status"], registry=r)
        self.events = Counter("omni_collect_events", "Events produced to channel topics", ["channel"], registry=r)
        self.deadletter = Counter("omni_collect_deadletter", "Calls and bodies dead-lettered", ["reason"], registry=r)
        self.seconds = Histogram(
            "omni_collect_request_seconds", "From the request's arrival to its answer (broker acknowledgement included)",
            ["call"], registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip


class Collector:
    """Answers tracking calls; ``sink`` is set once the producer has started (503 until then)."""

    def __init__(
        self, settings: Settings, sources: Sources, translator: Translator, sink: Sink | None = None,
        metrics: CollectMetrics | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.sources = sources
        self.translate = translator
        self.sink = sink
        self.metrics = metrics or CollectMetrics()
        self.acknowledged = 0  # requests whose records the broker acknowledged

    async def handle(self, request: web.Request, path: str) -> web.Response:
        started = time.monotonic()
        call = PATHS.get(path)
        if call is None:
            answer = Answer(404, _error("not_found", f"no endpoint /v1/{path[:40]}; the calls are {', '.join((*CALLS, 'batch'))}"))
        else:
            answer = await self._answer(request, call)
        label = call or "unknown"
        self.metrics.requests.labels(label, str(answer.status)).inc()
        self.metrics.seconds.labels(label).observe(time.monotonic() - started)
        response = web.json_response(answer.body, status=answer.status, dumps=lambda o: orjson.dumps(o).decode())
        if answer.close:
            response.force_close()
        return response

    async def _answer(self, request: web.Request, call: str) -> Answer:
        s = self.settings
        path = f"/v1/{call}"
        limit = s.collect_max_batch_bytes if call == "batch" else s.collect_max_call_bytes
        received_at = time.time()
        try:
            raw, complete = await _read(request, max(limit, MAX_KEPT))
        except Exception as exc:  # a body that is not what its Content-Encoding says (aiohttp undoes gzip and deflate)
            unread = await self._refuse_whole(b"", None, path, "malformed_body", f"the body could not be read: {exc}".strip(), 400)
            return Answer(unread.status, unread.body, close=True)
        source: Source | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            source = self.sources.lookup(basic_auth_user(header))
        if len(raw) > limit or not complete:
            what = f"{len(raw)}{'' if complete else '+'} bytes"
            return await self._refuse_whole(raw, source, path, "oversized", f"{what} > {limit}, the limit of a {'batch' if call == 'batch' else 'call'}", 413, complete)
        if header is not None and source is None:
            return await self._refuse_whole(raw, None, path, "unauthorized", "the write key (Basic auth user name) belongs to no source", 401)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return await self._refuse_whole(raw, source, path, "malformed_json", str(exc), 400)
        if not isinstance(body, dict):
            return await self._refuse_whole(raw, source, path, "not_an_object", f"the body is a JSON {type(body).__name__}, not an object", 400)
        if source is None:
            key = body.get("writeKey")
            source = self.sources.lookup(key if isinstance(key, str) else None)
            if source is None:
                why = "no write key (Basic auth user name, or writeKey in the body)" if not key else "the writeKey belongs to no source"
                return await self._refuse_whole(raw, None, path, "unauthorized", why, 401)

        outs: list[Out] = []
        refused: list[Refused] = []
        accepted = unmapped = 0
        if call != "batch":
            results = [(self._translate(call, body, source, received_at), raw, "")]
        else:
            results = self._batch(body, source, received_at)
        for result, original, prefix in results:
            if isinstance(result, Mapped):
                outs.append(Out(result.topic, result.key, result.value))
                accepted += 1
                continue
            result = result.at(prefix) if prefix else result
            outs.append(self._letter(original, source, path, result.reason, result.message))
            if result.client_error:
                refused.append(result)
            else:
                unmapped += 1
        if not await self._send(outs):
            return UNAVAILABLE
        self.metrics.events.labels(source.channel).inc(accepted)
        self._fault()
        if refused:
            first = refused[0]
            answer = _error(first.reason, first.message)
            answer.update(
                field=first.field, accepted=accepted, unmapped=unmapped,
                errors=[{"field": r.field, "reason": r.reason, "message": r.detail} for r in refused[:MAX_ERRORS]],
            )  # fmt: skip
            return Answer(400, answer)
        return Answer(200, {"success": True, "accepted": accepted, "unmapped": unmapped})

    def _batch(self, body: dict[str, Any], source: Source, received_at: float) -> list[tuple[Mapped | Refused, bytes, str]]:
        """Each message of a batch, translated; the batch's ``context`` is under each message's own."""
        batch = body.get("batch")
        if not isinstance(batch, list):
            return [(Refused("invalid_call", "batch", "must be an array of calls"), orjson.dumps(body), "")]
        shared = body.get("context") if isinstance(body.get("context"), dict) else None
        out: list[tuple[Mapped | Refused, bytes, str]] = []
        for i, message in enumerate(batch):
            prefix = f"batch[{i}]"
            original = orjson.dumps(message)
            if not isinstance(message, dict):
                out.append((Refused("invalid_call", "", "must be an object"), original, prefix))
                continue
            if len(original) > self.settings.collect_max_call_bytes:
                out.append((Refused("oversized", "", f"{len(original)} bytes > {self.settings.collect_max_call_bytes}, the limit of a call"), original, prefix))  # fmt: skip
                continue
            call = message.get("type")
            if call not in CALLS:
                out.append((Refused("invalid_call", "type", f"must be one of {', '.join(CALLS)}"), original, prefix))
                continue
            if shared is not None:
                own = message.get("context")
                message = {**message, "context": {**shared, **own} if isinstance(own, dict) else shared}
            out.append((self._translate(call, message, source, received_at, body.get("sentAt")), original, prefix))
        return out

    def _translate(self, call: str, message: dict[str, Any], source: Source, received_at: float, sent_at: Any = None) -> Mapped | Refused:
        try:
            return self.translate(call, message, source, received_at, sent_at)
        except Exception as exc:  # a bug met this call: it is kept for a replay after the fix
            log.exception("translating a %s call failed", call)
            return Refused(PROCESSING_ERROR, "", f"{type(exc).__name__}: {exc}")

    def _letter(self, value: bytes, source: Source | None, path: str, reason: str, detail: str, complete: bool = True) -> Out:
        self.metrics.deadletter.labels(reason).inc()
        headers = [
            ("dlq.reason", reason.encode()),
            ("dlq.error", detail.encode("utf-8", "replace")[:1000]),
            ("dlq.topic", self.settings.topic(source.topic).encode() if source else b""),
            ("dlq.origin", b"collect"),
            ("dlq.path", path.encode()),
        ]
        if source is not None:
            headers.append(("dlq.source", source.name.encode()))
        if not complete:
            headers.append(("dlq.truncated", b"true"))
        return Out(DEADLETTER, None, value[:MAX_KEPT], headers)

    async def _refuse_whole(
        self, raw: bytes, source: Source | None, path: str, reason: str, detail: str, status: int, complete: bool = True
    ) -> Answer:
        """The whole request refused: its body dead-lettered, then the answer (503 if the broker does not take it)."""
        if not await self._send([self._letter(raw, source, path, reason, detail, complete)]):
            return UNAVAILABLE
        return Answer(status, _error(reason, detail))

    async def _send(self, outs: list[Out]) -> bool:
        """Whether the broker acknowledged every record in time."""
        if not outs:
            return True
        if self.sink is None:
            return False
        try:
            await asyncio.wait_for(self.sink.send(outs), timeout=self.settings.collect_ack_timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            log.warning("produce not acknowledged within %ss: %r", self.settings.collect_ack_timeout_s, exc)
            return False
        self.acknowledged += 1
        return True

    def _fault(self) -> None:
        """Testing only: die as a SIGKILL would, after the broker acknowledged, before answering."""
        if self.settings.fault_collect_kill_after == self.acknowledged:
            log.warning("fault: SIGKILL after the broker acknowledged request %d, before answering it", self.acknowledged)
            os.kill(os.getpid(), signal.SIGKILL)


def _error(code: str, message: str) -> dict[str, Any]:
    """Segment's error shape (``code``, ``message``), which its SDKs log."""
    return {"success": False, "code": code, "message": message}


async def _read(request: web.Request, cap: int) -> tuple[bytes, bool]:
    """The body (gzip undone by aiohttp), up to ``cap`` bytes; and whether that was all of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65_536):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], False
    return b"".join(chunks), True


def aiohttp_app(collector: Collector) -> web.Application:
    """The endpoints on a bare aiohttp application (unit tests, and the framework measurement)."""

    async def calls(request: web.Request) -> web.Response:
        return await collector.handle(request, request.match_info["call"])

    app = web.Application()
    app.router.add_post("/v1/{call}", calls)
    return app
