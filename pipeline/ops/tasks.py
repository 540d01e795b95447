"""``kill -USR1 <worker>``: log where every asyncio task of the process is waiting.

A worker that owns partitions and makes no progress shows nothing in its log: its loop
is parked on an ``await`` somewhere (a lock, a producer's future, a rebalance). A thread
dump would only show the event loop idling in ``select``; the tasks' own stacks say
which await it is. The fault campaign sends this signal to every worker when the group
does not catch up after healing, so a liveness bug leaves its trace in the logs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal

log = logging.getLogger(__name__)


def dump_tasks() -> str:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"{len(tasks)} asyncio tasks:\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- {task.get_name()}\n")
        for line in _awaiting(task.get_coro()):
            out.write(f"    {line}\n")
    return out.getvalue()


def _awaiting(coro: object) -> list[str]:
    """The chain of awaits a coroutine is parked on, outermost first (a task's own stack shows one frame)."""
    lines = []
    while coro is not None and len(lines) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if nxt is None:
            lines.append(f"waiting on {coro!r}"[:300] if frame is None else "")
        coro = nxt
    return [line for line in lines if line]


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("%s", dump_tasks()))
