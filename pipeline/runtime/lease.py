"""Group membership as a lease: a worker writes for its partitions only while it surely owns them.

The group coordinator expels a member it has not heard from for the session timeout
and gives its partitions to others. The member itself learns of it only at its next
heartbeat. A worker that was stopped (SIGSTOP, a VM pause, a long GC) past the
session timeout wakes up still believing it owns its partitions: without a check it
fires their timers, sends actions and writes their changelog while their new owner,
which restored them meanwhile, does the same (a zombie; issue 24 measured 68 to 115
actions sent twice in a fault run).

The coordinator keeps a member for at least ``session_timeout`` after it received the
member's last heartbeat, and that heartbeat was *sent* before its answer came back. So
from a successful heartbeat sent at ``t``, the worker is still a member until
``t + session_timeout``; it acts only before ``t + session_timeout - margin``. Past
that it has to assume it was expelled, give up what it has not checkpointed, and let
the group assign it partitions again (see ``pipeline.runtime.engine``).

Records handed to the producer before the stop would still go out after it: aiokafka's
sender task runs on wake-up before anything else can check, and a batch whose answer
was lost is retried from the producer's queue long after it was handed over. So each
producer is guarded (:meth:`Lease.guard`): past the lease, it sends nothing more from
its queue and fails what it holds, and the engine replaces it before it owns
partitions again. What this cannot close: a request already written to the socket
before the stop. Kafka's transactional producer would fence that at the broker; here
it reaches the broker during the stop, before another member can be given the
partition (the session timeout has to pass first).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class Expelled(Exception):
    """The lease ran out: nothing more may be sent or written for the partitions held."""


class Lease:
    def __init__(self, session_timeout_s: float, margin_s: float) -> None:
        self.length_s = session_timeout_s - margin_s
        self.renewed_at = time.monotonic()

    def renew(self, sent_at: float | None = None) -> None:
        self.renewed_at = max(self.renewed_at, sent_at if sent_at is not None else time.monotonic())

    def valid(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) - self.renewed_at < self.length_s

    def guard(self, producer: Any) -> None:
        """Past the lease, ``producer`` sends nothing more: what it holds fails with :class:`Expelled`, for good.

        aiokafka's sender takes the batches to send from its accumulator (``drain_by_nodes``);
        the guard fails them there instead, without taking them (which would give them
        sequence numbers the broker then waits for). For good: a producer that held
        records past the lease must not send them once the lease is renewed (the
        partitions may have moved and come back meanwhile), so the engine replaces it.
        """
        accumulator = producer._message_accumulator
        drain = accumulator.drain_by_nodes
        expired = False

        def drain_within_lease(ignore_nodes: Any, muted_partitions: Any = frozenset()) -> Any:
            nonlocal expired
            # Only while it holds records: an idle producer before the first assignment (a join
            # can take half a session timeout on Tansu) has nothing to keep from the broker.
            expired = expired or (bool(accumulator._batches) and not self.valid())
            if expired:
                for tp in list(accumulator._batches):
                    for batch in accumulator._batches.pop(tp):
                        batch.failure(Expelled("the lease ran out before this batch was sent"))
            return drain(ignore_nodes, muted_partitions)

        accumulator.drain_by_nodes = drain_within_lease

    def follow(self, coordinator: Any) -> None:
        """Renew on every heartbeat the coordinator answers (aiokafka's ``_do_heartbeat``).

        aiokafka keeps its last good heartbeat in a local variable of its heartbeat loop, so
        the call is wrapped: the time it was sent renews the lease when the answer says the
        member is known (no error, or a rebalance in progress, which keeps the member for the
        rebalance timeout).
        """
        heartbeat = coordinator._do_heartbeat

        async def heartbeat_and_renew() -> bool:
            sent_at = time.monotonic()
            ok = bool(await heartbeat())
            if ok:
                self.renew(sent_at)
            return ok

        coordinator._do_heartbeat = heartbeat_and_renew
