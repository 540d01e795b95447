"""Faults the runtime opens on purpose, for the tests and the fault campaign. Never set in production.

A narrow window, such as a crash between two partitions' changelog writes, is hit by luck once
in thousands of kills; a guarantee that holds there has to be shown there, every run.
"""

from __future__ import annotations

import logging
import os
from typing import TypeVar

log = logging.getLogger(__name__)

TORN_EXIT = 86  # the exit code of a process that tore a checkpoint on purpose

Part = TypeVar("Part")


def tear(parts: list[tuple[int, Part]], partition: int | None) -> list[tuple[int, Part]] | None:
    """The one part of a checkpoint to write before dying, when this checkpoint is the one to tear.

    ``parts`` are (state partition, what to write); the checkpoint tears when it holds
    ``partition``'s part and another's, as a crash after the first acknowledgement would.
    """
    if partition is None or len(parts) < 2 or all(p != partition for p, _ in parts):
        return None
    return [(p, part) for p, part in parts if p == partition]


class InjectedFault(RuntimeError):
    """A failure raised on purpose where a real one (a broker refusing writes) would be raised."""


def die_torn(partition: int) -> None:
    log.error("fault injection: checkpoint torn after state partition %d's part; exiting", partition)
    logging.shutdown()
    os._exit(TORN_EXIT)
