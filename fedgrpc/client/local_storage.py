"""Local intermediate data: kept on the node, per project, never sent anywhere.

Layout: ``<data_dir>/projects/<project>/objects/<id>`` holds the bytes and ``index.jsonl`` one
JSON record per object (appended, so a crash mid-write loses at most the last record and
never rewrites the others). Tags live in the index, so later analyses of the same project
find them (FLAME: "persistent; access granted to other analyses part of the same project").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from fedgrpc.errors import NotFound

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class LocalObject:
    id: str
    tag: str
    content_type: str
    analysis_id: str
    created_at: float
    size: int


class LocalStorage:
    """One project's local objects on this node."""

    def __init__(self, data_dir: Path, project_id: str) -> None:
        self.root = Path(data_dir) / "projects" / _dir_name(project_id)
        self._objects = self.root / "objects"
        self._index = self.root / "index.jsonl"
        self._lock = threading.Lock()

    def put(self, data: bytes, *, content_type: str, tag: str, analysis_id: str) -> LocalObject:
        record = LocalObject(
            id=uuid.uuid4().hex,
            tag=tag,
            content_type=content_type,
            analysis_id=analysis_id,
            created_at=time.time(),
            size=len(data),
        )
        with self._lock:
            self._objects.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomically(self._objects / record.id, data)
            with self._index.open("a", encoding="utf-8") as index:
                index.write(json.dumps(asdict(record)) + "\n")
        return record

    def get(self, object_id: str) -> tuple[LocalObject, bytes]:
        record = next((r for r in self.records() if r.id == object_id), None)
        if record is None:
            raise NotFound(f"no local intermediate data with id {object_id!r}")
        return record, (self._objects / record.id).read_bytes()

    def by_tag(self, tag: str) -> list[LocalObject]:
        """Objects with ``tag``, oldest first."""
        return [r for r in self.records() if r.tag == tag]

    def tags(self, substring: str | None = None) -> list[str]:
        seen = dict.fromkeys(r.tag for r in self.records() if r.tag)
        return [t for t in seen if not substring or substring in t]

    def records(self) -> list[LocalObject]:
        try:
            lines = self._index.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(LocalObject(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a torn last line after a crash; the object it named is unreachable
        return records


def _dir_name(project_id: str) -> str:
    """The project's directory name: itself when harmless, else a hash (no path tricks)."""
    if _SAFE_NAME.match(project_id) and project_id not in (".", ".."):
        return project_id
    return "p-" + hashlib.sha256(project_id.encode()).hexdigest()[:32]


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
