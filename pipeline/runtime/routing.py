"""Which worker owns which state partition, known to every worker.

A profile lookup can reach any worker, but only the owner of a key's partition
holds it. The consumer group already decides who owns what; this assignor has
every member announce its web address when it joins, and the leader hands the
whole partition-to-address map to every member with its assignment. The map is
as fresh as the last rebalance, which is exactly when ownership changes.

A worker passes a request on with the API token, so an address is taken from the
map only if it is one host's ``scheme://host:port`` in the scheme this worker is
configured with (``OMNI_WEB_SCHEME``): no plain http when https is configured, no
path, query, credentials or wildcard address. Anything else is refused, logged,
and never sent the token. The map says what the group's members announced, and
anyone who can join the consumer group can announce: over https the token goes
only to a peer whose certificate the configured CA vouches for.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata


log = logging.getLogger(__name__)

# A DNS name: dot-separated labels of letters, digits, hyphens (and underscores, which compose's service
# names may hold), none starting or ending with a hyphen; ``urlsplit`` has lower-cased it.
_DNS_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")


def peer_address(announced: object, scheme: str) -> str:
    """What a group member announced, as the ``scheme://host:port`` a worker may send the token to.

    Raises ValueError, saying why, for anything else: another scheme than the configured one,
    credentials, a path, query or fragment, no port, a host that is neither an IP address nor a
    DNS name, or an address that is not one host's (0.0.0.0, multicast).
    """
    if not isinstance(announced, str) or not announced.isascii() or not announced.isprintable():
        raise ValueError("not a printable ASCII string")
    if not announced.startswith(f"{scheme}://"):
        raise ValueError(f"not {scheme}://, the scheme this worker is configured with (OMNI_WEB_SCHEME)")
    parts = urlsplit(announced)
    if "@" in parts.netloc:
        raise ValueError("carries credentials")
    if parts.path or parts.query or parts.fragment or "?" in announced or "#" in announced:
        raise ValueError("has a path, query or fragment; a peer is host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    if not port:
        raise ValueError("names no port")
    host = parts.hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _DNS_NAME.fullmatch(host) or host.replace(".", "").isdigit():
            raise ValueError("its host is neither an IP address nor a DNS name") from None
        return f"{scheme}://{host}:{port}"
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError("its host is not one machine's address")
    return f"{scheme}://[{ip.compressed}]:{port}" if ip.version == 6 else f"{scheme}://{ip}:{port}"


class RoutingAssignor(RoundRobinPartitionAssignor):
    """Round-robin assignment, plus the state partitions' owners' web addresses."""

    name = "omni-routing"

    def __init__(self, url: str, state_topic: str, scheme: str = "http") -> None:
        self.url = url
        self.state_topic = state_topic
        self.scheme = scheme
        self.owners: dict[int, str] = {}  # state partition -> owner's web address, checked by peer_address
        self.refused: dict[int, str] = {}  # state partition -> why its owner's announced address was refused
        try:
            peer_address(url, scheme)
        except ValueError as exc:
            log.warning("this worker announces %r, which the others will refuse to pass requests to: %s", url, exc)

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        return ConsumerProtocolMemberMetadata(self.version, list(topics), orjson.dumps({"url": self.url}))

    def assign(  # type: ignore[override]
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        plain = RoundRobinPartitionAssignor.assign(cluster, members)
        owners: dict[int, str] = {}
        for member, assignment in plain.items():
            url = _url_of(members[member])
            for topic, partitions in assignment.assignment:
                if topic == self.state_topic and url:
                    owners.update(dict.fromkeys(partitions, url))
        routes = orjson.dumps({str(p): url for p, url in owners.items()})
        return {m: ConsumerProtocolMemberAssignment(a.version, a.assignment, routes) for m, a in plain.items()}

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        try:
            routes = orjson.loads(assignment.user_data or b"{}")
        except orjson.JSONDecodeError:
            routes = {}  # a member of another version led this round: no map until the next
        owners: dict[int, str] = {}
        refused: dict[int, str] = {}
        for p, announced in routes.items() if isinstance(routes, dict) else ():
            if not p.isdigit():
                continue
            try:
                owners[int(p)] = peer_address(announced, self.scheme)
            except ValueError as exc:
                refused[int(p)] = str(exc)
                log.warning("the owner of state partition %s announced %r: %s; nothing is passed on to it", p, announced, exc)
        self.owners, self.refused = owners, refused


def _url_of(metadata: ConsumerProtocolMemberMetadata) -> str | None:
    try:
        return orjson.loads(metadata.user_data or b"{}").get("url")  # type: ignore[no-any-return]
    except (orjson.JSONDecodeError, AttributeError):
        return None
