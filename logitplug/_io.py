"""Writing files so that a reader (or a crash) never sees half of one, and naming them by what made them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any, **dump_kwargs: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, **dump_kwargs).encode())


def link_or_copy(source: Path, dest: Path) -> None:
    """Put ``source``'s content at ``dest``: a hard link where the file system allows, else a copy.
    Only for files nothing writes in place (plugin weights are always written as a fresh file), as a
    write through one name would change the other."""
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # another device, or links unsupported
        shutil.copy2(source, dest)


def stable_key(*parts: Any) -> str:
    """A short stable name for JSON-able settings: artifacts made with other settings get another
    folder instead of being reused."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
