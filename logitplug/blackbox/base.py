"""The one interface every black-box log-probability source implements."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how text maps to ids (vocabulary, merges, specials).

    Stored beside plugins and caches so that artifacts made for one tokenizer are never silently
    used with another one.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = json.loads(backend.to_str())
        payload.pop("truncation", None)
        payload.pop("padding", None)
        body = json.dumps(payload, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(
        {"eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id, "pad": tokenizer.pad_token_id}, sort_keys=True
    )
    return hashlib.sha256((body + specials).encode()).hexdigest()[:16]


class BlackBox(ABC):
    """A frozen language model seen only through next-token log-probabilities.

    Every method returns *normalized* log-probabilities in float32. ``full_vocab`` says whether
    a source returns the whole vocabulary or only its top-k (closed APIs).
    """

    full_vocab: ClassVar[bool] = True

    identity: str
    tokenizer: Any
    vocab_size: int
    max_context: int
    device: torch.device

    @property
    def fingerprint(self) -> str:
        """Black-box identity plus tokenizer hash: the key for caches and plugin sidecars."""
        return f"{self.identity}|tok:{tokenizer_fingerprint(self.tokenizer)}"

    @abstractmethod
    def logprobs_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced next-token log-probs: (B, T, V), or (N, V) at the True entries of ``select`` (B, T)."""

    @abstractmethod
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Run prompts (left-padded); return the next-token log-probs (B, V) and a decoding state."""

    @abstractmethod
    def step(self, state: Any, next_tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) to ``state``; return the next-token log-probs (B, V)."""
