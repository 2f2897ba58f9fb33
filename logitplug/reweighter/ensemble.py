"""Several trained reweighters as one: their logits weighted and summed, with the ``Reweighter`` interface.

Combined through a product rule at strength 1, ``LogitSum([r1, r2], [a1 / 2, a2 / 2])`` gives
``softmax(z_bb + (a1 * z_1 + a2 * z_2) / 2)``: the geometric mean of the two plugins, each at the strength
it chose. Reweighters trained on the same rows but with different inputs (the default's own token table,
the black box's pretrained one) err differently; averaging their votes is the cheapest ensemble there is
(no training, one more small model in the decoding loop). Every member shares the black box's tokenizer
and advances in lock-step with it, each with its own KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .model import Reweighter


@dataclass
class _MembersState:
    states: list[Any]

    def reorder(self, index: torch.Tensor) -> None:
        for state in self.states:
            state.reorder(index)


class LogitSum(nn.Module):
    """``sum_i weight_i * z_i`` of the members' logits.

    Examples:
        >>> import torch
        >>> class Fixed(torch.nn.Module):  # a stand-in member: the same logits for every position
        ...     vocab_size = 3
        ...     def __init__(self, z): super().__init__(); self.z = torch.nn.Parameter(torch.tensor(z))
        ...     def forward(self, ids, mask, select=None): return self.z.expand(*ids.shape, 3)
        >>> both = LogitSum([Fixed([1.0, 0.0, 0.0]), Fixed([0.0, 2.0, 0.0])], [0.5, 0.5])
        >>> both(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))[0, -1].tolist()
        [0.5, 1.0, 0.0]
    """

    supports_sparse = False  # the members' hidden states differ in size: decode through full logits

    def __init__(self, members: Sequence[Reweighter], weights: Sequence[float]):
        super().__init__()
        if not members:
            raise ValueError("LogitSum needs at least one member reweighter")
        if len(weights) != len(members):
            raise ValueError(f"LogitSum: {len(members)} members but {len(weights)} weights")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"LogitSum weights must be finite numbers, got {list(weights)}")
        sizes = {m.vocab_size for m in members}
        if len(sizes) > 1:
            raise ValueError(f"LogitSum members' vocabularies differ: {sorted(sizes)}")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]

    @property
    def vocab_size(self) -> int:
        return self.members[0].vocab_size

    @property
    def lm(self) -> nn.Module:
        """The model whose context limit applies (the shortest of the members')."""
        return min((m.lm for m in self.members), key=lambda lm: lm.config.max_position_embeddings)

    def _sum(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(w * z.float() for w, z in zip(self.weights, logits))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        return self._sum([m(input_ids, attention_mask, select) for m in self.members])

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, _MembersState]:
        started = [m.start(input_ids, attention_mask) for m in self.members]
        return self._sum([z for z, _ in started]), _MembersState([s for _, s in started])

    def step(self, state: _MembersState, next_tokens: torch.Tensor) -> torch.Tensor:
        return self._sum([m.step(s, next_tokens) for m, s in zip(self.members, state.states)])
