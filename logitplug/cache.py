"""Disk cache of the black box's teacher-forced log-probs at the trained (response) positions.

The black box is frozen, so its log-probs for a training sequence never change: record them on
the first pass and replay them in every later epoch. An entry holds, per response position, the
top-(k+1) token ids with their exact log-probs, where the (k+1)-th slot is replaced by the target
token when the target is outside the top-k. ``dense`` rebuilds full-vocabulary log-probs by
spreading the remaining mass uniformly over the other tokens (``combine.densify_topk``); the
target's own log-prob is always exact. How far the cached loss is from the exact loss is measured
in ``tests/test_cache.py`` and ``benchmarks/speed.py``.

Entries are keyed by the black-box fingerprint (identity + tokenizer hash) and the token ids, and
the folder records its fingerprint, so an entry from another model can never be used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ._io import atomic_write_bytes
from .combine import densify_topk
from .data import EncodedExample

META_NAME = "cache_meta.json"
CACHE_FORMAT = 1


class CacheMismatchError(ValueError):
    """The cache folder was written for another black box, tokenizer, or top-k."""


class LogProbCache:
    """Top-k log-prob cache in ``path`` for one black box; safe for several processes at once."""

    def __init__(self, path: str | Path, blackbox_fingerprint: str, vocab_size: int, top_k: int = 256):
        if top_k < 1:
            raise ValueError(f"cache top_k must be >= 1, got {top_k}")
        self.path = Path(path)
        self.fingerprint = blackbox_fingerprint
        self.vocab_size = int(vocab_size)
        self.top_k = min(int(top_k), self.vocab_size - 1)
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        meta = {"blackbox": self.fingerprint, "top_k": self.top_k, "vocab_size": self.vocab_size, "format": CACHE_FORMAT}
        self.path.mkdir(parents=True, exist_ok=True)
        meta_path = self.path / META_NAME
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise CacheMismatchError(
                    f"log-prob cache {self.path} was written for {found}, not for {meta}. "
                    "Use another --cache-dir or delete that folder."
                )
        else:
            atomic_write_bytes(meta_path, json.dumps(meta, sort_keys=True).encode())

    def key(self, example: EncodedExample) -> str:
        h = hashlib.sha256(self.fingerprint.encode())
        h.update(f"|{example.prompt_len}|".encode())
        h.update(torch.tensor(example.input_ids, dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()[:40]

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / f"{key}.safetensors"

    def has(self, example: EncodedExample) -> bool:
        key = self.key(example)
        return key in self._memory or self._file(key).exists()

    def get(self, example: EncodedExample) -> dict[str, torch.Tensor] | None:
        key = self.key(example)
        entry = self._memory.get(key)
        if entry is None and self._file(key).exists():
            entry = load_file(str(self._file(key)))
            self._memory[key] = entry
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, example: EncodedExample, logprobs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Record full log-probs (n, V) of one example's n response positions with their targets (n,)."""
        values, ids = logprobs.float().topk(self.top_k + 1, dim=-1)
        target_lp = logprobs.float().gather(-1, targets[:, None]).squeeze(-1)
        outside = ~(ids[:, : self.top_k] == targets[:, None]).any(-1)
        ids[outside, self.top_k] = targets[outside]
        values[outside, self.top_k] = target_lp[outside]
        entry = {"ids": ids.to(torch.int32).cpu().contiguous(), "logprobs": values.cpu().contiguous()}
        key = self.key(example)
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        save_file(entry, tmp)
        os.replace(tmp, target)
        self._memory[key] = entry
        return entry

    def dense(self, entries: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu") -> torch.Tensor:
        """Full-vocabulary log-probs (N, V) for a list of entries, concatenated in order."""
        ids = torch.cat([e["ids"] for e in entries]).to(device)
        values = torch.cat([e["logprobs"] for e in entries]).to(device)
        return densify_topk(ids, values, self.vocab_size)
