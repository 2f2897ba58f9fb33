"""Proxy-tuning's steering signal, log p_expert - log p_antiexpert, as a drop-in reweighter.

Combined through ``ProductRule(alpha=a)`` it gives exactly proxy-tuning / DExperts:
``softmax(z_bb + a * (log p_expert - log p_anti))``. Both small models share the black box's
tokenizer and advance in lock-step with it, each with its own KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .model import Reweighter


@dataclass
class _PairState:
    expert: Any
    anti: Any

    def reorder(self, index: torch.Tensor) -> None:
        self.expert.reorder(index)
        self.anti.reorder(index)


class LogitDifference(nn.Module):
    """Log-prob difference of an expert and an anti-expert, with the ``Reweighter`` interface."""

    def __init__(self, expert: Reweighter, anti_expert: Reweighter):
        super().__init__()
        if expert.vocab_size != anti_expert.vocab_size:
            raise ValueError(f"expert and anti-expert vocabularies differ: {expert.vocab_size} vs {anti_expert.vocab_size}")
        self.expert, self.anti_expert = expert, anti_expert

    @property
    def vocab_size(self) -> int:
        return self.expert.vocab_size

    @property
    def lm(self) -> nn.Module:
        """The model whose context limit applies (the shorter of the two)."""
        e, a = self.expert.lm, self.anti_expert.lm
        return e if e.config.max_position_embeddings <= a.config.max_position_embeddings else a

    @staticmethod
    def _diff(expert: torch.Tensor, anti: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(expert, -1) - torch.log_softmax(anti, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        return self._diff(self.expert(input_ids, attention_mask, select), self.anti_expert(input_ids, attention_mask, select))

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, _PairState]:
        e, es = self.expert.start(input_ids, attention_mask)
        a, as_ = self.anti_expert.start(input_ids, attention_mask)
        return self._diff(e, a), _PairState(es, as_)

    def step(self, state: _PairState, next_tokens: torch.Tensor) -> torch.Tensor:
        return self._diff(self.expert.step(state.expert, next_tokens), self.anti_expert.step(state.anti, next_tokens))
