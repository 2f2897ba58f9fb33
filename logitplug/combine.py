"""Combination rules: how black-box log-probs and reweighter logits become one distribution.

One rule, one small class, one signature: ``rule(bb_logprobs, rw_logits) -> logprobs``, all
tensors (..., V). Inputs are never changed in place; outputs are normalized log-probabilities.
The benchmark runner swaps rules by name through ``RULES``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


class CombinationRule(ABC):
    """Base class: ``needs_reweighter`` says whether ``rw_logits`` may be None."""

    name: ClassVar[str]
    needs_reweighter: ClassVar[bool] = True

    @abstractmethod
    def __call__(self, bb_logprobs: torch.Tensor, rw_logits: torch.Tensor | None) -> torch.Tensor:
        """Normalized log-probs (..., V) from black-box log-probs and reweighter logits (..., V)."""

    def signature(self) -> str:
        return f"rule:{self.name}"


class ProductRule(CombinationRule):
    """The paper's normalized product of experts: ``log_softmax(w * z_bb + alpha * z_r)``.

    Args:
        alpha (float, default 1.0): strength of the reweighting; 1.0 is the paper's rule, 0.0
            gives the black box back.
        blackbox_weight (float, default 1.0): w, how far the plugin trusts the black box: 1 is
            the paper's rule; below 1 the black box's distribution is flattened (a temperature of
            1/w) before the reweighter acts, so a reweighter trained through the rule can write
            phrasing the black box finds unlikely (Adidas's catalogue sentences) while still
            leaning on it. A geometric counterpart of the paper's weighted mixture.

    Examples:
        >>> import torch
        >>> bb = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1)
        >>> rw = torch.tensor([[0.0, 3.0, 0.0]])
        >>> ProductRule()(bb, rw).exp().argmax(-1).tolist()
        [1]
        >>> torch.allclose(ProductRule(alpha=0.0)(bb, rw), bb)
        True
        >>> [round(p, 3) for p in ProductRule(alpha=0.0, blackbox_weight=0.5)(bb, rw).exp()[0].tolist()]  # flatter
        [0.506, 0.307, 0.186]
    """

    name = "product"

    def __init__(self, alpha: float = 1.0, blackbox_weight: float = 1.0):
        if not math.isfinite(alpha):
            raise ValueError(f"ProductRule alpha must be a finite number, got {alpha!r}")
        if not (math.isfinite(blackbox_weight) and 0 < blackbox_weight <= 1):
            raise ValueError(f"ProductRule blackbox_weight must be in (0, 1], got {blackbox_weight!r}")
        self.alpha, self.blackbox_weight = float(alpha), float(blackbox_weight)

    def __call__(self, bb_logprobs, rw_logits):
        if rw_logits is None:
            raise ValueError("ProductRule needs reweighter logits, got None")
        bb = bb_logprobs.float()
        if self.blackbox_weight != 1.0:
            bb = self.blackbox_weight * bb
        return torch.log_softmax(bb + self.alpha * rw_logits.float(), dim=-1)

    def signature(self) -> str:
        extra = "" if self.blackbox_weight == 1.0 else f"|bbw:{self.blackbox_weight:g}"  # old signatures unchanged
        return f"rule:product|alpha:{self.alpha:g}{extra}"


class SupportProductRule(CombinationRule):
    """The product rule restricted to the black box's top-k support, plus one "rest" bucket.

    The reweighter's logits count only on the k tokens the black box ranks highest; every other
    token keeps z_r = 0, so the mass outside the support moves as one bucket, split among its
    tokens as the black box splits it. This is exactly what a closed API with top-k
    log-probabilities allows, and a reweighter trained this way cannot lift a token the black box
    deems implausible above the support. Equivalent to ``ProductRule`` when k >= V.

    Args:
        k (int): support size (closed APIs: at most 20).
        alpha (float, default 1.0): strength of the reweighting.
        always (int, optional): a token id always in the support (the black box's EOS), beside
            its k likeliest other tokens: a plugin can then end an answer where the black box,
            primed by the prompt's format, would go on, which it cannot do through the rest bucket
            (a boosted bucket is shared by the whole vocabulary). Every row's support has the
            same size, k + 1.

    Examples:
        >>> import torch
        >>> bb = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), -1)
        >>> rw = torch.tensor([[0.0, 0.0, 0.0, 9.0]])  # tries to promote the least likely token
        >>> SupportProductRule(k=2)(bb, rw).argmax(-1).tolist()
        [0]
        >>> SupportProductRule(k=2, always=3)(bb, rw).argmax(-1).tolist()  # ... which is EOS
        [3]
        >>> torch.allclose(SupportProductRule(k=4)(bb, rw), ProductRule()(bb, rw))
        True
    """

    name = "product-topk"

    def __init__(self, k: int = 20, alpha: float = 1.0, always: int | None = None):
        if int(k) < 1:
            raise ValueError(f"SupportProductRule k must be >= 1, got {k!r}")
        if not math.isfinite(alpha):
            raise ValueError(f"SupportProductRule alpha must be a finite number, got {alpha!r}")
        self.k, self.alpha = int(k), float(alpha)
        self.always = None if always is None else int(always)

    def support_mask(self, bb_logprobs: torch.Tensor) -> torch.Tensor:
        """(..., V) True on the black box's top-k tokens (other than ``always``), and on ``always``."""
        scores = bb_logprobs
        if self.always is not None:
            scores = bb_logprobs.index_fill(-1, torch.tensor([self.always], device=bb_logprobs.device), -math.inf)
        k = min(self.k, bb_logprobs.shape[-1] - (self.always is not None))
        top = scores.topk(k, dim=-1).indices
        mask = torch.zeros_like(bb_logprobs, dtype=torch.bool).scatter(-1, top, True)
        if self.always is not None:
            mask[..., self.always] = True
        return mask

    def __call__(self, bb_logprobs, rw_logits):
        if rw_logits is None:
            raise ValueError("SupportProductRule needs reweighter logits, got None")
        rw = torch.where(self.support_mask(bb_logprobs), rw_logits.float(), 0.0)
        return torch.log_softmax(bb_logprobs.float() + self.alpha * rw, dim=-1)

    def signature(self) -> str:
        extra = "" if self.always is None else f"|always:{self.always}"
        return f"rule:product-topk|k:{self.k}|alpha:{self.alpha:g}{extra}"

    def restrict(self, ids: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> "Support":
        """Each position's support from a cached top-m (``ids``, ``logprobs``: (N, m), every id
        distinct, the target among them: ``cache.LogProbCache`` entries), as ``densify_topk`` would
        densify it. Training then needs the reweighter's logits on the k + 1 support tokens only,
        instead of all V (``Support.nll_and_hits``): the same loss, without the (N, V) tensors.
        Raises ValueError when the cache holds too few tokens for the support (k >= m)."""
        lp, ids = logprobs.float(), ids.long()
        m = ids.shape[-1]
        # the cache's last slot may hold a target below the uncached rest: the support must not reach it
        if m >= vocab_size or self.k + (self.always is not None) > m - 1:
            raise ValueError(f"a support of {self.k} tokens needs more than {self.k + 1 + (self.always is not None)} "
                             f"cached tokens per position, got {m}")
        rest = log1mexp(torch.logsumexp(lp, -1)) - math.log(vocab_size - m)  # each uncached token (densify_topk)
        scores, is_always = lp, None
        if self.always is not None:
            is_always = ids == self.always
            scores = lp.masked_fill(is_always, -math.inf)
        top_values, top_slots = scores.topk(self.k, dim=-1)  # cached values outrank the uncached rest
        support_ids, support_bb = ids.gather(-1, top_slots), top_values
        chosen = torch.zeros_like(ids, dtype=torch.bool).scatter(-1, top_slots, True)
        if is_always is not None:
            always_bb = torch.where(is_always.any(-1), lp.masked_fill(~is_always, -math.inf).amax(-1), rest)
            support_ids = torch.cat([support_ids, torch.full_like(support_ids[:, :1], self.always)], -1)
            support_bb = torch.cat([support_bb, always_bb[:, None]], -1)
            chosen = chosen | is_always
        best_out, best_slot = lp.masked_fill(chosen, -math.inf).max(-1)
        best_out_id = ids.gather(-1, best_slot[:, None]).squeeze(-1)
        uncached_best = rest > best_out  # only when every cached token is in the support
        at_target = ids == targets[:, None]
        target_bb = torch.where(at_target.any(-1), lp.masked_fill(~at_target, -math.inf).amax(-1), rest)
        in_support = support_ids == targets[:, None]
        return Support(
            ids=support_ids, bb=support_bb, outside=log1mexp(torch.logsumexp(support_bb, -1)),
            best_outside=torch.where(uncached_best, rest, best_out),
            best_outside_id=torch.where(uncached_best, torch.full_like(best_out_id, -1), best_out_id),
            target_bb=target_bb, target_slot=torch.where(in_support.any(-1), in_support.long().argmax(-1), -1),
            targets=targets.long(),
        )


@dataclass
class Support:
    """Per-position support of ``SupportProductRule`` (see ``restrict``): the support's ids and
    black-box log-probs (N, s), the log of the black box's mass outside it, the best token outside
    it (value and id; -1 for an uncached one), and the target's log-prob and slot (-1: outside)."""

    ids: torch.Tensor
    bb: torch.Tensor
    outside: torch.Tensor
    best_outside: torch.Tensor
    best_outside_id: torch.Tensor
    target_bb: torch.Tensor
    target_slot: torch.Tensor
    targets: torch.Tensor

    def nll_and_hits(self, rw: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL of the targets under the product rule at ``alpha`` given the reweighter's
        logits on the support (N, s), and how many positions' likeliest token is the target: equal
        to the dense rule over the densified cache (tests/test_combine.py)."""
        z = self.bb + alpha * rw.float()
        log_norm = torch.logaddexp(torch.logsumexp(z, -1), self.outside)
        inside = self.target_slot >= 0
        target_rw = rw.float().gather(-1, self.target_slot.clamp(min=0)[:, None]).squeeze(-1)
        target = self.target_bb + torch.where(inside, alpha * target_rw, torch.zeros_like(target_rw))
        best_in, slot = z.max(-1)
        pred = torch.where(best_in >= self.best_outside, self.ids.gather(-1, slot[:, None]).squeeze(-1), self.best_outside_id)
        return -(target - log_norm).sum(), (pred == self.targets).sum()


class BlackBoxOnly(CombinationRule):
    """The black box alone (zero-shot baseline); the reweighter is ignored.

    Examples:
        >>> import torch
        >>> bb = torch.log_softmax(torch.tensor([[1.0, 2.0]]), -1)
        >>> torch.allclose(BlackBoxOnly()(bb, None), bb)
        True
    """

    name = "blackbox"
    needs_reweighter = False

    def __call__(self, bb_logprobs, rw_logits):
        return torch.log_softmax(bb_logprobs.float(), dim=-1)


class ReweighterOnly(CombinationRule):
    """The small model alone: its logits, normalized (the paper's mixture with a = 1).

    Examples:
        >>> import torch
        >>> ReweighterOnly()(torch.zeros(1, 2), torch.tensor([[0.0, 0.0]])).exp().tolist()
        [[0.5, 0.5]]
    """

    name = "reweighter"

    def __call__(self, bb_logprobs, rw_logits):
        if rw_logits is None:
            raise ValueError("ReweighterOnly needs reweighter logits, got None")
        return torch.log_softmax(rw_logits.float(), dim=-1)


class MixtureRule(CombinationRule):
    """The paper's "weighted" baseline: ``p = weight * p_small + (1 - weight) * p_bb``, in log space.

    Args:
        weight (float, default 0.5): mixture weight of the small model, in [0, 1].

    Examples:
        >>> import torch
        >>> bb = torch.log(torch.tensor([[1.0, 0.0]]))
        >>> rw = torch.tensor([[0.0, 0.0]])
        >>> MixtureRule(0.5)(bb, rw).exp().tolist()
        [[0.75, 0.25]]
    """

    name = "mixture"

    def __init__(self, weight: float = 0.5):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"MixtureRule weight must be in [0, 1], got {weight!r}")
        self.weight = float(weight)

    def __call__(self, bb_logprobs, rw_logits):
        if rw_logits is None:
            raise ValueError("MixtureRule needs reweighter logits, got None")
        log_w = math.log(self.weight) if self.weight > 0 else -math.inf
        log_1w = math.log1p(-self.weight) if self.weight < 1 else -math.inf
        small = torch.log_softmax(rw_logits.float(), dim=-1) + log_w
        big = torch.log_softmax(bb_logprobs.float(), dim=-1) + log_1w
        return torch.logaddexp(small, big)

    def signature(self) -> str:
        return f"rule:mixture|weight:{self.weight:g}"


RULES: dict[str, type[CombinationRule]] = {
    cls.name: cls for cls in (ProductRule, SupportProductRule, BlackBoxOnly, ReweighterOnly, MixtureRule)
}


def get_rule(name: str, **kwargs: Any) -> CombinationRule:
    """A rule by name, e.g. ``get_rule("product", alpha=1.0)``."""
    if name not in RULES:
        raise ValueError(f"unknown combination rule {name!r}; choose one of {sorted(RULES)}")
    return RULES[name](**kwargs)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends; -inf where x >= 0."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def densify_topk(ids: torch.Tensor, logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full log-probs (..., V) from a top-k support (..., k): the mass outside the support is
    spread uniformly over the other V - k tokens (the least-informative completion).

    Examples:
        >>> import torch
        >>> dense = densify_topk(torch.tensor([[0]]), torch.log(torch.tensor([[0.5]])), 3)
        >>> [round(p, 3) for p in dense.exp()[0].tolist()]
        [0.5, 0.25, 0.25]
    """
    k = ids.shape[-1]
    if k >= vocab_size:
        out = torch.full((*ids.shape[:-1], vocab_size), -math.inf, dtype=torch.float32, device=ids.device)
        return out.scatter(-1, ids.long(), logprobs.float())
    rest = log1mexp(torch.logsumexp(logprobs.float(), dim=-1, keepdim=True)) - math.log(vocab_size - k)
    out = rest.expand(*ids.shape[:-1], vocab_size).clone()
    return out.scatter(-1, ids.long(), logprobs.float())


def densify_support(ids: torch.Tensor, logprobs: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Like ``densify_topk`` for supports of different sizes per row: only entries where ``valid``
    (..., m) is True count (a closed API's top-k plus, when it is outside, the actual token).

    Examples:
        >>> import torch
        >>> ids, lp = torch.tensor([[0, 0]]), torch.log(torch.tensor([[0.5, 0.5]]))
        >>> dense = densify_support(ids, lp, torch.tensor([[True, False]]), 3)  # a duplicate slot, ignored
        >>> [round(p, 3) for p in dense.exp()[0].tolist()]
        [0.5, 0.25, 0.25]
    """
    values = torch.where(valid, logprobs.float(), -math.inf)
    count = valid.sum(-1, keepdim=True)
    total = torch.logsumexp(values, dim=-1, keepdim=True)
    rest = log1mexp(total) - torch.log((vocab_size - count).clamp(min=1).float())
    rest = torch.where(count >= vocab_size, torch.full_like(rest, -math.inf), rest)
    out = rest.expand(*ids.shape[:-1], vocab_size).clone()
    # invalid slots repeat the row's first valid entry, so scattering them changes nothing
    first = valid.float().argmax(-1, keepdim=True)
    safe_ids = torch.where(valid, ids.long(), ids.long().gather(-1, first))
    safe_values = torch.where(valid, logprobs.float(), logprobs.float().gather(-1, first))
    return out.scatter(-1, safe_ids, safe_values)


def truncate_to_topk(
    logprobs: torch.Tensor, k: int, keep: torch.Tensor | None = None, keep_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """What a closed API returns, made dense: the top-k of each row of ``logprobs`` (..., V), plus
    the exact log-prob of ``keep`` (...,) when given (an echoed prompt token; only where
    ``keep_mask`` is True, if given), the rest spread uniformly (see ``densify_support``)."""
    vocab = logprobs.shape[-1]
    values, ids = logprobs.float().topk(min(k, vocab), dim=-1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    if keep is not None:
        keep = keep.long()
        extra_v = logprobs.float().gather(-1, keep[..., None])
        outside = ~(ids == keep[..., None]).any(-1, keepdim=True)
        if keep_mask is not None:
            outside = outside & keep_mask.bool()[..., None]
        ids, values = torch.cat([ids, keep[..., None]], -1), torch.cat([values, extra_v], -1)
        valid = torch.cat([valid, outside], -1)
    return densify_support(ids, values, valid, vocab)
