"""Group membership as a lease (pipeline.runtime.lease): valid for a session timeout less a margin after a heartbeat was sent."""

from __future__ import annotations

import time

from pipeline.runtime.lease import Lease


def test_the_lease_runs_from_when_the_answered_heartbeat_was_sent() -> None:
    lease = Lease(session_timeout_s=6.0, margin_s=1.0)
    now = time.monotonic()
    lease.renewed_at = now - 60
    lease.renew(sent_at=now - 4.9)
    assert lease.valid(now)
    assert not lease.valid(now + 0.2), "5 s after the heartbeat left, the coordinator may be about to expel us"


def test_a_late_answer_to_an_old_heartbeat_does_not_move_the_lease_back_or_forward_past_its_sending() -> None:
    lease = Lease(session_timeout_s=6.0, margin_s=1.0)
    now = time.monotonic()
    lease.renew(sent_at=now)
    lease.renew(sent_at=now - 30)  # a heartbeat stuck through a 30 s stall, answered now
    assert lease.renewed_at == now


async def test_only_answered_heartbeats_renew_it() -> None:
    class Coordinator:
        answer = False

        async def _do_heartbeat(self) -> bool:
            return self.answer

    coordinator = Coordinator()
    lease = Lease(session_timeout_s=6.0, margin_s=1.0)
    lease.renewed_at = time.monotonic() - 10
    lease.follow(coordinator)
    assert await coordinator._do_heartbeat() is False
    assert not lease.valid()
    coordinator.answer = True
    assert await coordinator._do_heartbeat() is True
    assert lease.valid()
