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

What this cannot close: records handed to the producer just before the stop are still
written after it (aiokafka's sender task runs on wake-up before anything can check).
Kafka's transactional producer would fence those at the broker; here they are at most
the records of the producer's linger (a few milliseconds of output), and every sender
drops an ``action_id`` it has delivered.
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
