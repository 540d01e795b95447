"""State directories of partitions a worker no longer owns are deleted after the cleanup delay, the owned ones never."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.actions.catalogue import Catalogue
from pipeline.engine.omnichannel import omnichannel_engine
from pipeline.ops.metrics import Metrics
from pipeline.settings import Settings
from tests.helpers import write_rules


def test_unowned_state_directories_go_after_the_delay_and_owned_ones_stay(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", rules_file=write_rules(tmp_path), state_cleanup_delay_s=600)
    engine = omnichannel_engine(settings, Catalogue.load(settings.catalogue_file), Metrics())
    for p in range(4):
        (settings.state_dir / f"state-{p}").mkdir(parents=True)
    long_ago = time.time() - 3600
    for p in (0, 1):
        os.utime(settings.state_dir / f"state-{p}", (long_ago, long_ago))
    engine.state[0] = None  # type: ignore[assignment]  # owned: never deleted, however old
    engine.partitions.clean_state_dirs()
    assert sorted(d.name for d in settings.state_dir.iterdir()) == ["state-0", "state-2", "state-3"]
