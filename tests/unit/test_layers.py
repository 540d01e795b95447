"""The runtime knows no domain: nothing under ``pipeline/runtime`` imports identity, profiles, actions and the rest.

Kafka Streams' Processor sees a context and never a customer; the same line here keeps
the loop, checkpoints, restore, rebalance, fence and Kafka helpers usable by any job
(the benchmark's reference job is one) and testable without the omnichannel pipeline.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pipeline

RUNTIME = Path(pipeline.__file__).parent / "runtime"
DOMAIN = ("identity", "profiles", "actions", "measure", "ingest", "privacy", "engine", "senders", "collect")
TOOLS = ("simulate", "bench", "chaos", "cli")
# What the runtime may still reach besides itself: the settings object, and the worker's metrics
# (pipeline.ops.metrics: Prometheus series, some named for the domain; to be split).
# pipeline._hotpath__mypyc is the one shared library mypyc builds for every compiled module: loading it
# runs none of the domain modules it holds.
ALLOWED = {"pipeline.runtime", "pipeline.settings", "pipeline.ops", "pipeline._hotpath__mypyc"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_runtime_module_imports_the_domain_or_the_tools() -> None:
    edges = [
        f"{path.relative_to(RUNTIME.parent)} imports {name}"
        for path in sorted(RUNTIME.rglob("*.py"))
        for name in sorted(_imports(path))
        if name.split(".")[:2] in [["pipeline", part] for part in DOMAIN + TOOLS]
    ]
    assert edges == []


def test_loading_the_runtime_loads_nothing_of_the_domain() -> None:
    """Transitively too: an import of the settings that pulled in identity rules was such an edge."""
    modules = sorted(
        "pipeline." + ".".join(p.relative_to(RUNTIME).with_suffix("").parts).removesuffix(".__init__")
        for p in RUNTIME.rglob("*.py")
    )
    script = f"import sys; import {', '.join(m.replace('pipeline.', 'pipeline.runtime.', 1) for m in modules)}; " \
             "print('\\n'.join(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('pipeline.')})))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert set(loaded) <= ALLOWED, f"the runtime loads {sorted(set(loaded) - ALLOWED)}"
