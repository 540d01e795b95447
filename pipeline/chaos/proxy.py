"""A TCP fault proxy for the Kafka protocol, between clients and one broker.

It forwards bytes both ways and reads the frames as it goes (a 4-byte size, then the
request header's API key and correlation id; a response starts with the correlation
id), so a fault can pick one kind of request. What it breaks, on demand:

* ``drop_responses(api, n)``: the next ``n`` responses to requests of API key ``api``
  are thrown away and the connection is closed, as when a broker's acknowledgement is
  lost on its way back: the request *was* applied, and the client, seeing no answer,
  sends it again. This is the fault that makes a non-idempotent producer write twice.
* ``delay(seconds)``: every frame waits this long before it is passed on.
* ``pause()`` / ``resume()``: nothing is passed on in either direction until resumed
  (a network partition that heals; the connections stay open).
* ``reset()``: every open connection is closed at once.

The broker must advertise the proxy's address (Tansu's ``--advertised-listener-url``),
or clients would learn the broker's own address from metadata and go around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PRODUCE = 0
FETCH = 1
OFFSET_COMMIT = 8


@dataclass
class FaultCounts:
    """What the proxy did, by kind: the campaign's report counts these."""

    dropped: Counter[int] = field(default_factory=Counter)  # responses thrown away, by API key
    resets: int = 0
    connections: int = 0


class _Link:
    """One client connection and its broker connection."""

    def __init__(self, client: asyncio.StreamWriter, broker: asyncio.StreamWriter) -> None:
        self.client = client
        self.broker = broker
        self.requests: dict[int, int] = {}  # correlation id -> API key, for requests in flight

    def close(self) -> None:
        for writer in (self.client, self.broker):
            with contextlib.suppress(Exception):
                writer.transport.abort()  # a reset, not a polite close: the client must see the loss


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.counts = FaultCounts()
        self._drop: Counter[int] = Counter()  # API key -> responses still to drop
        self._delay_s = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, *self.listen)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset(count=False)
        if self._server is not None:
            await self._server.wait_closed()

    # --- faults -------------------------------------------------------------------------

    def drop_responses(self, api_key: int, count: int = 1) -> None:
        self._drop[api_key] += count

    def delay(self, seconds: float) -> None:
        self._delay_s = seconds

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def reset(self, count: bool = True) -> None:
        for link in list(self._links):
            link.close()
        self._links.clear()
        if count:
            self.counts.resets += 1

    # --- forwarding -----------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(client_w, broker_w)
        self._links.add(link)
        self.counts.connections += 1
        up = asyncio.create_task(self._pump(client_r, broker_w, link, upstream=True))
        down = asyncio.create_task(self._pump(broker_r, client_w, link, upstream=False))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.close()
            self._links.discard(link)
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, upstream: bool) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                (size,) = struct.unpack(">i", head)
                body = await reader.readexactly(size)
                await self._flowing.wait()
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                if upstream:
                    api_key, _version, correlation = struct.unpack(">hhi", body[:8])
                    link.requests[correlation] = api_key
                else:
                    (correlation,) = struct.unpack(">i", body[:4])
                    api_key = link.requests.pop(correlation, -1)
                    if self._drop[api_key] > 0:
                        # Applied by the broker, never seen by the client: close, as a lost
                        # connection would, so the client retries now rather than at its timeout.
                        self._drop[api_key] -= 1
                        self.counts.dropped[api_key] += 1
                        log.info("dropped a response to API %d (correlation %d)", api_key, correlation)
                        link.close()
                        return
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
