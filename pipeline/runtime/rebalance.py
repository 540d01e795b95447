"""The engine's rebalance listener: a last checkpoint before partitions go, a restore when they come.

Partitions revoked are drained first (their checkpoint made durable) and then closed;
partitions assigned are restored from their changelog (``pipeline.runtime.partitions``)
while heartbeats go on. After the lease ran out, an assignment also reads the input again
from the last commit (``Engine._lease_lost``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from pipeline.runtime import faults
from pipeline.runtime.lease import Expelled

if TYPE_CHECKING:
    from pipeline.runtime.engine import Engine

log = logging.getLogger(__name__)


class Rebalance(ConsumerRebalanceListener):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        engine = self.engine
        if engine.failed is not None or engine.rejoining:
            return  # owns nothing
        async with engine.lock:
            try:
                if engine.settings.fault_revoke_error and revoked:
                    raise faults.InjectedFault("the checkpoint before a rebalance failed (fault injection)")
                if not engine.lease.valid():
                    raise Expelled("the lease ran out before the rebalance")
                await engine.checkpointer.drain()
            except Expelled:
                engine._lease_lost()  # a zombie's drain would write over its partitions' new owners
            except Exception as exc:
                # aiokafka logs what a listener raises and goes on with the rebalance: the partitions
                # would stay open here, firing timers and writing the changelog, in a worker that no
                # longer owns them. Their state since the last checkpoint is not durable; their new
                # owner replays it. Give them up, and stop the worker (the loop raises it).
                log.error("the checkpoint before a rebalance failed; giving up every partition and stopping: %r", exc)
                engine.abandon(exc)
            for tp in revoked:
                if tp.topic == engine.job.state_topic:
                    engine.partitions.close(tp.partition)
                if tp in engine._lag_shown:
                    engine._lag_shown.discard(tp)
                    engine.metrics.lag.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        engine = self.engine
        if engine.stopping.is_set():
            return  # leaving the group (or failed): whoever owns these next restores them
        engine.lease.renew()  # the group answered: a member from now on
        # aiokafka starts heartbeating only once this callback returns, and a restore can take longer
        # than the session timeout (a store rebuilt from a long changelog): without heartbeats the
        # coordinator would expel us and the lease would run out, and every worker restoring after a
        # rebalance then gave up, rejoined and restored again (a 30-minute fault campaign never settled).
        keepalive = asyncio.create_task(_heartbeat(engine.consumer, engine.settings.heartbeat_interval_ms / 1000))
        try:
            await self._assigned(assigned)
        finally:
            keepalive.cancel()
        engine.ready.set()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        engine = self.engine
        async with engine.lock:
            if engine.rejoining:
                # What we sent before giving up may still be on its way (a slow or cut-off link),
                # and what the producers held past the lease must never go (Engine.renew_producers).
                await engine.renew_producers()
                # Input read past the last commit was dropped with the state it changed: read it
                # again. (aiokafka keeps the position of a partition that stays assigned.)
                for tp in assigned:
                    committed = await engine.consumer.committed(tp)
                    if committed is None:
                        await engine.consumer.seek_to_beginning(tp)
                    else:
                        engine.consumer.seek(tp, committed)
                engine.rejoining = False
            new = sorted(
                tp.partition for tp in assigned if tp.topic == engine.job.state_topic and tp.partition not in engine.state
            )
            await engine.partitions.open(new)


async def _heartbeat(consumer: AIOKafkaConsumer, every_s: float) -> None:
    """Heartbeat as aiokafka's own task would, while a rebalance callback keeps that task from running."""
    coordinator = consumer._coordinator
    while True:
        await asyncio.sleep(every_s)
        try:
            await coordinator._do_heartbeat()  # answered, it renews the lease (Lease.follow)
        except Exception as exc:  # the next rebalance or the coordinator's own task deals with it
            log.debug("heartbeat during a restore failed: %r", exc)
