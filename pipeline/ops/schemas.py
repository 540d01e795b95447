"""JSON Schema in ``schemas/``, generated from the pydantic models (the source of truth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.actions.model import Action
from pipeline.ingest.contract import ERASURE_ADAPTER, EVENT_ADAPTER, OUTCOME_ADAPTER


def generated() -> dict[str, dict[str, Any]]:
    return {
        "event.schema.json": {"title": "Event", **EVENT_ADAPTER.json_schema()},
        "action.schema.json": Action.model_json_schema(),
        "outcome.schema.json": {"title": "Outcome", **OUTCOME_ADAPTER.json_schema()},
        "erasure.schema.json": {"title": "ErasureRequest", **ERASURE_ADAPTER.json_schema()},
    }


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generated().items():
        path = folder / name
        path.write_text(_text(schema), encoding="utf-8")
        written.append(path)
    return written


def check_schemas(folder: Path) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    stale = []
    for name, schema in generated().items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != _text(schema):
            stale.append(name)
    return stale
