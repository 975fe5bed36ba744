"""The golden corpus's files: one recorded history per run, as a release wrote it.

``tests/golden/<release>/`` holds ``MANIFEST.json`` (the release, the commit it was
recorded with, the scenarios and their runs), ``definitions/`` (every workflow version the
runs used, as published), ``runs/*.json`` (per run: its events as stored, with seq, type,
data, causation_id, recorded_at and schema_version when the release wrote one; its
read-model rows as the projector wrote them; and every replay step as ``shoal replay``
showed it) and ``bundles/`` (incident bundles the corpus imported elsewhere).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent
RELEASE = re.compile(r"^\d+\.\d+\.\d+$")
JSON_COLUMNS = frozenset({"params", "outputs"})


def jsonable(value: Any) -> Any:
    """A read-model value as the corpus keeps it: times in UTC ISO form, ids as text."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(
            UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def row(values: Mapping[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """One read-model row with ``columns``, jsonb columns decoded, values as above."""
    out = {}
    for c in columns:
        v = values.get(c)
        if c in JSON_COLUMNS and isinstance(v, str):
            v = json.loads(v)
        out[c] = jsonable(v)
    return out


def dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


@dataclass(frozen=True, slots=True)
class GoldenRun:
    release: str
    path: Path
    body: dict[str, Any]

    @property
    def instance_id(self) -> str:
        return str(self.body["instance_id"])

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.body["events"])

    def __str__(self) -> str:
        return f"{self.release}/{self.path.name}"


def releases(root: Path = ROOT) -> list[Path]:
    """Every release directory of the corpus, oldest first."""
    return sorted((p for p in root.iterdir() if p.is_dir() and RELEASE.match(p.name)),
                  key=lambda p: tuple(int(x) for x in p.name.split(".")))


def runs(root: Path = ROOT) -> Iterator[GoldenRun]:
    for rel in releases(root):
        for path in sorted((rel / "runs").glob("*.json")):
            yield GoldenRun(rel.name, path, json.loads(path.read_text()))


def bundles(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    for rel in releases(root):
        for path in sorted((rel / "bundles").glob("*.json")):
            yield rel.name, path
