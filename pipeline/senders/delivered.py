"""What a sender remembers of the actions it handled, for a bounded time.

The reference e-mail sender writes an action's id the moment the SMTP server accepts
it, so that a replayed action is not sent twice. Kept for good, that store grows with
every message ever sent. Ids are kept in generations instead, one RocksDB directory per
``keep_s`` of wall-clock time (``delivered.<n>``, n the time divided by ``keep_s``): a
lookup reads the current and the previous one, a write goes to the current, and when a
new period begins the generation before the previous is deleted whole (no scan, no
compaction). An id is thus remembered for at least ``keep_s`` and at most twice that.

Why forgetting is safe: an action comes again only when the sender reads its topic
again (a crash, a restart, an offset reset), and the action topics keep a record for
their retention (7 days by default, as ``keep_s``). An action decided longer ago than
``keep_s`` is not sent at all (:meth:`DeliveredIds.too_old`): past the memory, a replay
cannot be told from a first delivery, and an offer that old is no use to the customer.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from rocksdict import Rdict

log = logging.getLogger(__name__)
PREFIX = "delivered."
LEGACY = "delivered"  # the single store kept for good before generations


class DeliveredIds:
    def __init__(self, state_dir: Path, keep_s: float, now: float) -> None:
        self.state_dir = state_dir
        self.keep_s = keep_s
        self.forgotten = 0  # ids dropped with their generation
        state_dir.mkdir(parents=True, exist_ok=True)
        self.epoch = int(now // keep_s)
        self.current = Rdict(str(state_dir / f"{PREFIX}{self.epoch}"))
        self.previous: Rdict | None = None
        self._open_previous()

    def _open_previous(self) -> None:
        """The generation before the current one, if any; older ones are deleted."""
        for path in sorted(self.state_dir.glob(f"{PREFIX}*")):
            epoch = int(path.name[len(PREFIX) :])
            if epoch < self.epoch - 1:
                self._drop(path)
        previous = self.state_dir / f"{PREFIX}{self.epoch - 1}"
        legacy = self.state_dir / LEGACY
        if not previous.exists() and legacy.exists():  # kept for good before: it serves one more period
            legacy.rename(previous)
        elif legacy.exists():
            self._drop(legacy)
        if previous.exists():
            self.previous = Rdict(str(previous))

    def _drop(self, path: Path) -> None:
        db = Rdict(str(path))
        try:
            self.forgotten += sum(1 for _ in db.keys())
        finally:
            db.close()
        shutil.rmtree(path)
        log.info("forgot the actions delivered in %s (older than OMNI_SENDER_KEEP_S)", path.name)

    def get(self, action_id: str) -> Any:
        found = self.current.get(action_id)
        if found is None and self.previous is not None:
            found = self.previous.get(action_id)
        return found

    def __setitem__(self, action_id: str, value: Any) -> None:
        self.current[action_id] = value

    def too_old(self, created_at: float, now: float) -> bool:
        """An action decided before what is remembered: whether it was sent cannot be known."""
        return created_at < now - self.keep_s

    def rotate(self, now: float) -> None:
        """Start a new generation when a new period has begun, and delete the one it makes too old."""
        epoch = int(now // self.keep_s)
        if epoch == self.epoch:
            return
        if self.previous is not None:
            path = Path(self.previous.path())
            self.previous.close()
            self.previous = None
            self._drop(path)
        if epoch == self.epoch + 1:
            self.previous = self.current
        else:  # idle for more than a period: both are too old
            path = Path(self.current.path())
            self.current.close()
            self._drop(path)
        self.epoch = epoch
        self.current = Rdict(str(self.state_dir / f"{PREFIX}{epoch}"))

    def close(self) -> None:
        self.current.close()
        if self.previous is not None:
            self.previous.close()
