"""Where a worker sends the API token: only to an address a group member announced that is one host's
``scheme://host:port`` in the configured scheme, and never on through a redirect. The peers here are
local HTTP servers that record what reaches them; nothing needs a broker."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from pipeline.engine.lookup import HOPS_HEADER, ProfileLookup
from pipeline.engine.rulestats import RuleStats
from pipeline.runtime.routing import RoutingAssignor, peer_address
from pipeline.settings import Settings
from tests.helpers import issue_certificate

TOKEN = "peer-token"
PARTITIONS = 4


@pytest.mark.parametrize(
    ("announced", "scheme", "address"),
    [
        ("http://10.1.2.3:6066", "http", "http://10.1.2.3:6066"),
        ("http://worker-1:6066", "http", "http://worker-1:6066"),
        ("http://omni-worker-0.omni-workers.default.svc.cluster.local:6066", "http",
         "http://omni-worker-0.omni-workers.default.svc.cluster.local:6066"),
        ("http://Worker-1:6066", "http", "http://worker-1:6066"),
        ("https://127.0.0.1:8443", "https", "https://127.0.0.1:8443"),
        ("http://[::1]:6066", "http", "http://[::1]:6066"),
        ("http://[fd00:0:0::7]:6066", "http", "http://[fd00::7]:6066"),
    ],
)  # fmt: skip
def test_an_address_of_one_host_in_the_configured_scheme_is_a_peer(announced: str, scheme: str, address: str) -> None:
    assert peer_address(announced, scheme) == address


@pytest.mark.parametrize(
    ("announced", "scheme", "why"),
    [
        ("http://10.1.2.3:6066", "https", "scheme"),  # https configured: never in the clear
        ("https://10.1.2.3:6066", "http", "scheme"),
        ("HTTP://10.1.2.3:6066", "http", "scheme"),
        ("ftp://10.1.2.3:6066", "http", "scheme"),
        ("//10.1.2.3:6066", "http", "scheme"),
        ("http://evil.example:80/collect?t=", "http", "path"),  # f"{url}/profiles" would land on its path
        ("http://evil.example:80/", "http", "path"),
        ("http://evil.example:80#", "http", "path"),
        ("http://evil.example:80?", "http", "path"),
        ("http://user:pw@10.1.2.3:6066", "http", "credentials"),
        ("http://10.1.2.3\\@evil.example:80", "http", "credentials"),
        ("http://10.1.2.3", "http", "port"),
        ("http://10.1.2.3:", "http", "port"),
        ("http://10.1.2.3:0", "http", "port"),
        ("http://10.1.2.3:99999", "http", "port"),
        ("http://10.1.2.3:http", "http", "port"),
        ("http://0.0.0.0:6066", "http", "machine"),
        ("http://[::]:6066", "http", "machine"),
        ("http://224.0.0.1:6066", "http", "machine"),
        ("http://:6066", "http", "host"),
        ("http://evil%2eexample:80", "http", "host"),
        ("http://-worker:6066", "http", "host"),
        ("http://2130706433:6066", "http", "host"),  # a number some resolvers read as an address
        ("http://a b:6066", "http", "host"),
        ("http://worker-1:6066\r\nX-Injected: 1", "http", "printable"),
        ("http://worker\t-1:6066", "http", "printable"),
        ("http://wörker:6066", "http", "ASCII"),
        (None, "http", "string"),
        (["http://10.1.2.3:6066"], "http", "string"),
        ({"url": "http://10.1.2.3:6066"}, "http", "string"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_with_a_reason(announced: Any, scheme: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        peer_address(announced, scheme)


def routing_for(routes: dict[str, Any], scheme: str = "http") -> RoutingAssignor:
    """A member's routing map as the group's leader handed it out with the assignment."""
    routing = RoutingAssignor("http://127.0.0.1:6066", "state", scheme)
    routing.on_assignment(ConsumerProtocolMemberAssignment(0, [("state", [])], orjson.dumps(routes)))
    return routing


def test_the_map_keeps_the_checked_addresses_and_says_why_it_refused_the_others() -> None:
    routing = routing_for({"0": "http://10.0.0.1:6066", "1": "http://10.0.0.2:6066/x", "2": 7, "3": "https://10.0.0.3:1"})
    assert routing.owners == {0: "http://10.0.0.1:6066"}
    assert set(routing.refused) == {1, 2, 3} and "path" in routing.refused[1] and "scheme" in routing.refused[3]
    assert routing_for({"0": "https://10.0.0.1:6066"}, "https").owners == {0: "https://10.0.0.1:6066"}
    assert routing_for(["not", "a", "map"]).owners == {}


class Peer:
    """A stand-in for another worker: records every request that reaches it, with its headers."""

    def __init__(self, answer: web.Response | None = None) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.answer = answer
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path_qs, dict(request.headers)))
        if self.answer is not None:
            return self.answer
        if request.path == "/rules/stats":
            return web.json_response({"ledgers": {"1": {}}})
        return web.json_response({"id": request.query.get("id"), "answered_by": "peer"})

    @property
    def address(self) -> str:
        return f"{self.server.scheme}://127.0.0.1:{self.server.port}"

    @property
    def tokens_seen(self) -> list[str]:
        return [headers.get("Authorization", "") for _, headers in self.seen]


@pytest.fixture
async def peers() -> AsyncIterator[Callable[..., Awaitable[Peer]]]:
    started: list[Peer] = []

    async def start(answer: web.Response | None = None, tls: ssl.SSLContext | None = None) -> Peer:
        peer = Peer(answer)
        await peer.server.start_server(ssl=tls)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        await peer.server.close()


def engine_with(routing: RoutingAssignor, tmp_path: Path, scheme: str = "http", cafile: Path | None = None) -> Any:
    """What the lookup and the rule figures use of an engine: no partition of its own, the group's map."""
    tls = {"web_tls_certfile": tmp_path / "cert.pem", "web_tls_keyfile": tmp_path / "key.pem"} if scheme == "https" else {}
    settings = Settings(api_token=TOKEN, state_dir=tmp_path, web_scheme=scheme, web_tls_cafile=cafile, **tls)
    job = SimpleNamespace(partition_counts={"state": PARTITIONS}, state_topic="state",
                          processor=SimpleNamespace(rules=SimpleNamespace(catalogue=SimpleNamespace(rules=[]))))  # fmt: skip
    return SimpleNamespace(job=job, state={}, routing=routing, settings=settings)


async def test_a_lookup_goes_with_the_token_to_a_checked_owner_and_its_answer_comes_back(peers: Any, tmp_path: Path) -> None:
    peer = await peers()
    lookup = ProfileLookup(engine_with(routing_for(dict.fromkeys(map(str, range(PARTITIONS)), peer.address)), tmp_path), "DK")
    assert await lookup.by_id("customer_id:C1", 0) == (200, {"id": "customer_id:C1", "answered_by": "peer"})
    ((path, headers),) = peer.seen
    assert path.startswith("/profiles?id=") and headers["Authorization"] == f"Bearer {TOKEN}" and headers[HOPS_HEADER] == "1"


@pytest.mark.parametrize(
    "announce",
    [
        "{peer}/steal?x=",  # a path of its choosing
        "http://someone:secret@{host}",  # credentials
        "{peer}#",
    ],
)
async def test_a_lookup_never_sends_the_token_to_an_address_that_is_not_a_peer(
    peers: Any, tmp_path: Path, announce: str
) -> None:
    peer = await peers()
    announced = announce.format(peer=peer.address, host=peer.address.removeprefix("http://"))
    lookup = ProfileLookup(engine_with(routing_for(dict.fromkeys(map(str, range(PARTITIONS)), announced)), tmp_path), "DK")
    status, body = await lookup.by_id("customer_id:C1", 0)
    assert status == 502 and "does not send the token" in body["error"], body
    assert peer.seen == []


async def test_with_https_configured_a_plain_http_owner_gets_nothing(peers: Any, tmp_path: Path) -> None:
    peer = await peers()
    routing = routing_for(dict.fromkeys(map(str, range(PARTITIONS)), peer.address), "https")
    lookup = ProfileLookup(engine_with(routing, tmp_path, "https"), "DK")
    status, body = await lookup.by_id("customer_id:C1", 0)
    assert status == 502 and "https://" in body["error"], body
    assert peer.seen == []


async def test_a_redirect_from_an_owner_is_not_followed(peers: Any, tmp_path: Path) -> None:
    elsewhere = await peers()
    peer = await peers(web.Response(status=307, headers={"Location": f"{elsewhere.address}/collect"}))
    lookup = ProfileLookup(engine_with(routing_for(dict.fromkeys(map(str, range(PARTITIONS)), peer.address)), tmp_path), "DK")
    status, body = await lookup.by_id("customer_id:C1", 0)
    assert status == 502 and "error" in body, body
    assert len(peer.seen) == 1 and elsewhere.seen == []


async def test_the_rule_figures_ask_only_checked_owners(peers: Any, tmp_path: Path) -> None:
    good, bad = await peers(), await peers()
    routes = {"0": good.address, "1": good.address, "2": f"{bad.address}/x", "3": bad.address.replace("http", "https")}
    stats = await RuleStats(engine_with(routing_for(routes), tmp_path)).everywhere()
    assert good.tokens_seen == [f"Bearer {TOKEN}"] and bad.seen == []
    assert stats["complete"] is False and stats["partitions"] == [1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to issue test certificates")
async def test_over_https_the_token_goes_only_to_a_peer_the_configured_ca_vouches_for(peers: Any, tmp_path: Path) -> None:
    cafile, cert, key = issue_certificate(tmp_path / "ours", "omni-test-ca")
    _, other_cert, other_key = issue_certificate(tmp_path / "theirs", "someone-else")
    ours = Settings(web_scheme="https", web_tls_certfile=cert, web_tls_keyfile=key, state_dir=tmp_path)
    theirs = Settings(web_scheme="https", web_tls_certfile=other_cert, web_tls_keyfile=other_key, state_dir=tmp_path)
    peer, impostor = await peers(tls=ours.web_server_ssl()), await peers(tls=theirs.web_server_ssl())
    assert peer.address.startswith("https://")
    for owner, status in ((peer, 200), (impostor, 502)):
        routing = routing_for(dict.fromkeys(map(str, range(PARTITIONS)), owner.address), "https")
        lookup = ProfileLookup(engine_with(routing, tmp_path, "https", cafile), "DK")
        assert (await lookup.by_id("customer_id:C1", 0))[0] == status
    assert peer.tokens_seen == [f"Bearer {TOKEN}"] and impostor.seen == []  # the TLS handshake failed first


def test_https_needs_a_certificate_and_its_key() -> None:
    with pytest.raises(ValueError, match="OMNI_WEB_TLS_CERTFILE"):
        Settings(web_scheme="https")
    assert Settings().web_url == "http://127.0.0.1:6066"
    assert Settings(web_host="::1", web_port=7000).web_url == "http://[::1]:7000"
