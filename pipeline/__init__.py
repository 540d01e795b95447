"""Omnichannel customer pipeline: ingest -> identity -> profiles -> actions, with ops around it.

The per-event hot path is compiled with mypyc when the package is built (``setup.py``). Two
guards keep the compiled modules honest about their sources:

* in a source tree, a compiled module older than its ``.py`` refuses to load: an edit must
  never be shadowed by the last build (``make build`` rebuilds);
* ``OMNI_INTERPRETED=1`` loads every module from its source instead (a debugger, a profiler
  that sees Python frames, or a measurement of what compilation gains).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


def _compiled_sources() -> tuple[list[Path], float]:
    """The sources of this package's compiled modules, and when the newest compiled file was built.

    One shared library holds the code of every compiled module; a module's own extension is a
    small shim that a rebuild may leave as it was. The build as a whole is as new as its newest file.
    """
    sources, built = [], 0.0
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for extension in _HERE.rglob(f"*{suffix}"):
            built = max(built, extension.stat().st_mtime)
            source = extension.with_name(extension.name[: -len(suffix)] + ".py")
            if source.exists():
                sources.append(source)
    return sources, built


def hot_path_compiled() -> bool:
    """Whether this process runs the hot path compiled, not from its sources (the benchmark says which)."""
    from pipeline.engine import omnichannel

    return not (omnichannel.__file__ or "").endswith(".py")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds this package's modules as ``.py`` files even where a compiled one sits beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(f"{__name__}."):
            return None
        source = _HERE.joinpath(*fullname.split(".")[1:]).with_suffix(".py")
        return importlib.util.spec_from_file_location(fullname, source) if source.is_file() else None


if os.environ.get("OMNI_INTERPRETED", "") not in ("", "0"):
    sys.meta_path.insert(0, _SourceFirst())
elif (_HERE.parent / "setup.py").exists():  # a source tree, built in place; an installed wheel cannot go stale
    _sources, _built = _compiled_sources()
    for _source in _sources:
        if _source.stat().st_mtime > _built:
            raise ImportError(
                f"{_source.relative_to(_HERE.parent)} changed after the hot path was compiled: run `make build` "
                "to compile it again, or set OMNI_INTERPRETED=1 to run the sources"
            )
