"""Which worker owns which state partition, known to every worker.

A profile lookup can reach any worker, but only the owner of a key's partition
holds it. The consumer group already decides who owns what; this assignor has
every member announce its web address when it joins, and the leader hands the
whole partition-to-address map to every member with its assignment. The map is
as fresh as the last rebalance, which is exactly when ownership changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata


class RoutingAssignor(RoundRobinPartitionAssignor):
    """Round-robin assignment, plus the state partitions' owners' web addresses."""

    name = "omni-routing"

    def __init__(self, url: str, state_topic: str) -> None:
        self.url = url
        self.state_topic = state_topic
        self.owners: dict[int, str] = {}  # state partition -> owner's web address

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
        self.owners = {int(p): url for p, url in routes.items()}


def _url_of(metadata: ConsumerProtocolMemberMetadata) -> str | None:
    try:
        return orjson.loads(metadata.user_data or b"{}").get("url")  # type: ignore[no-any-return]
    except (orjson.JSONDecodeError, AttributeError):
        return None
