"""The build: the per-event hot path compiled to C with mypyc, everything else plain Python.

The modules below are ordinary, type-checked Python; mypyc turns them into C extensions that
run the same code without the interpreter's per-call and per-attribute overhead: 29.5 % fewer
instructions an event on the job's own path, and the full pipeline from about 0.8 of Quix
Streams' reference job to above it (the README's benchmark section). The sources stay the
source of truth:

* ``OMNI_COMPILE=0`` at install time skips compilation (pure Python, e.g. to step through the
  hot path in a debugger); so does a machine without a working C compiler, with a warning.
* In a source tree, a compiled module older than its source refuses to load
  (``pipeline/__init__.py``), so an edit is never silently shadowed by the last build: ``make
  build`` (or ``make test``) rebuilds, and a rebuild that fails leaves the old build refusing to
  load rather than running stale code.
"""

from __future__ import annotations

import os
import sys

HOT_MODULES = [
    "pipeline/runtime/partitioner.py",
    "pipeline/ingest/validate.py",
    "pipeline/ingest/normalise.py",
    "pipeline/identity/protocol.py",
    "pipeline/identity/rules.py",
    "pipeline/identity/resolve.py",
    "pipeline/profiles/profile.py",
    "pipeline/profiles/product.py",
    "pipeline/profiles/census.py",
    "pipeline/profiles/merge.py",
    "pipeline/runtime/job.py",
    "pipeline/engine/processor.py",
    "pipeline/engine/omnichannel.py",
    "pipeline/runtime/state/base.py",
    "pipeline/runtime/state/partition.py",
    "pipeline/runtime/state/memory.py",
    "pipeline/runtime/state/rocksdb.py",
    "pipeline/runtime/state/fence.py",
    "pipeline/measure/touches.py",
    "pipeline/measure/ledger.py",
    "pipeline/actions/channels.py",
    "pipeline/actions/policy.py",
    "pipeline/actions/plays/base.py",
    "pipeline/actions/plays/callcenter.py",
    "pipeline/actions/plays/cart.py",
    "pipeline/actions/plays/consumables.py",
    "pipeline/actions/plays/loyalty.py",
    "pipeline/actions/plays/pickup.py",
    "pipeline/actions/plays/stock.py",
    "pipeline/privacy/erasure.py",
]

if sys.argv[1:] == ["hot-modules"]:  # what the Makefile rebuilds after (before setuptools: it may not be installed)
    print(" ".join(HOT_MODULES))
    sys.exit(0)

from pathlib import Path  # noqa: E402

from setuptools import setup  # noqa: E402
from setuptools.command.build_ext import build_ext  # noqa: E402


def plain_python(why: str) -> list:  # type: ignore[type-arg]
    print(f"warning: {why}; the hot path runs as plain Python", file=sys.stderr)
    return []


class OptionalBuildExt(build_ext):
    """Compile if we can; a failed compilation leaves the pure-Python package, which works the same, slower."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: install without it
            plain_python(f"the hot path was not compiled ({exc})")
            return
        # setuptools leaves an extension it finds up to date as it was; a module's extension is a
        # shim that rarely changes while the shared library beside it is rebuilt. Stamp them all:
        # the package refuses a compiled module older than its source (pipeline/__init__.py).
        for ext in self.extensions:
            built = Path(self.get_ext_fullpath(ext.name))
            if built.exists():
                built.touch()


def ext_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("OMNI_COMPILE", "1") == "0":
        return plain_python("OMNI_COMPILE=0")
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        return plain_python(f"mypyc is not available ({exc})")
    try:
        return mypycify(HOT_MODULES, opt_level="3", group_name="pipeline._hotpath")
    except (Exception, SystemExit) as exc:  # mypyc type-checks first: a newer library's stubs can fail it
        return plain_python(f"mypyc could not compile the hot path ({exc!r})")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
