"""Shared stepping helpers for transformers causal LMs (black box and reweighter alike).

Both sides of the product rule are causal LMs that must be run teacher-forced (training) and
incrementally with a KV cache (decoding) over left- or right-padded batches. Keeping the
position-id and cache bookkeeping in one place guarantees that the two models see the same
positions, which is what makes our decoding loop and ``model.generate`` agree token for token.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache


@functools.cache
def _cache_argument(forward_owner: type) -> str:
    """The forward argument that takes a KV cache: transformers 5 renamed ``past_key_values`` to
    ``cache`` (the old name warns on every call and is announced for removal in 5.40)."""
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def with_cache(module: nn.Module, cache: DynamicCache) -> dict:
    """Keyword arguments that run ``module`` with ``cache``, updated in place, under either name."""
    return {_cache_argument(type(module)): cache, "use_cache": True}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, so left- and right-padded rows get the same positions."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def _softcap(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, H) without running the vocabulary head."""
    out = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the output head (and any soft-capping) to selected hidden states (..., H) -> (..., V)."""
    return _softcap(model, model.get_output_embeddings()(hidden))


MIN_SHARED_PREFIX = 16  # shorter common prefixes are not worth a second forward call


@dataclass
class SharedPrefix:
    """A batch whose rows all start with the same P real tokens, with those tokens cut out of
    every row: the prefix runs once (batch 1) and its KV cache is repeated for the rows."""

    length: int  # P
    cache: DynamicCache  # the prefix's keys/values, repeated to the batch size
    input_ids: torch.Tensor  # (B, T - P): each row without its first P real tokens, padding kept
    attention_mask: torch.Tensor  # (B, P + T - P): ones for the prefix, then the rows' masks
    position_ids: torch.Tensor  # (B, T - P)
    columns: torch.Tensor  # (B, T - P): the original column of every kept entry


def shared_prefix(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  first_needed: torch.Tensor | None = None) -> SharedPrefix | None:
    """Run the batch's common prefix once, if it has one worth sharing (None otherwise).

    Prompts built on the same template, and above all on the same fixed demonstrations, share
    hundreds of tokens; computing them once per batch instead of once per row is what makes
    demonstration-based recipes affordable on a CPU. Works for left- and right-padded rows.
    ``first_needed`` (B,): per row, the first column whose output is wanted; the prefix stops
    before it. Models with sliding-window attention share only when the whole batch fits in the
    window (then the window changes nothing)."""
    B, T = input_ids.shape
    window = getattr(model.config, "sliding_window", None)
    if B < 2 or (window and T > window):
        return None
    mask = attention_mask.long()
    lengths = mask.sum(-1)
    starts = mask.argmax(-1)  # first real token
    ends = T - mask.flip(-1).argmax(-1)  # one past the last
    if not bool((ends - starts == lengths).all()):  # padding inside a row: not a layout we make
        return None
    room = int(lengths.min()) - 1  # every row keeps at least one token after the prefix
    if first_needed is not None:
        room = min(room, int((first_needed - starts).min()))
    if room < MIN_SHARED_PREFIX:
        return None
    offsets = torch.arange(room, device=input_ids.device)
    aligned = input_ids.gather(1, starts[:, None] + offsets[None, :])
    same = (aligned == aligned[:1]).all(0).long().cumprod(0)
    P = int(same.sum())
    if P < MIN_SHARED_PREFIX:
        return None
    cache = DynamicCache(config=model.config)
    model.base_model(input_ids=aligned[:1, :P], position_ids=offsets[None, :P], **with_cache(model.base_model, cache))
    cache.batch_repeat_interleave(B)
    kept = torch.arange(T - P, device=input_ids.device)[None, :].expand(B, -1)
    columns = kept + P * (kept >= starts[:, None]).long()
    rest_mask = attention_mask.gather(1, columns)
    full_mask = torch.cat([rest_mask.new_ones((B, P)), rest_mask], dim=1)
    return SharedPrefix(P, cache, input_ids.gather(1, columns), full_mask,
                        position_ids_from_mask(full_mask)[:, P:], columns)


def selected_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor | None = None,
    share_prefix: bool = False,
) -> torch.Tensor:
    """Teacher-forced logits: (B, T, V), or (N, V) at the True entries of the (B, T) ``select`` mask.

    Selecting before the head skips the vocabulary projection for prompt positions, which is
    most of the cost of a small model with a large vocabulary. ``share_prefix`` (with
    ``select``) runs the rows' common prefix once (see ``shared_prefix``).
    """
    if share_prefix and select is not None and bool(select.any(-1).all()):
        shared = shared_prefix(model, input_ids, attention_mask, select.long().argmax(-1))
        if shared is not None:
            hidden = model.base_model(
                input_ids=shared.input_ids, attention_mask=shared.attention_mask, position_ids=shared.position_ids,
                **with_cache(model.base_model, shared.cache),
            ).last_hidden_state
            return head_logits(model, hidden[select.gather(1, shared.columns)])
    hidden = hidden_states(model, input_ids, attention_mask)
    if select is not None:
        hidden = hidden[select]
    return head_logits(model, hidden)


@dataclass
class StepState:
    """KV cache plus the running attention mask of one batch being decoded."""

    past_key_values: DynamicCache
    attention_mask: torch.Tensor  # (B, T_so_far)

    def reorder(self, index: torch.Tensor) -> None:
        """Select/repeat batch rows (beam search), in the cache and the mask alike."""
        self.past_key_values.reorder_cache(index)
        self.attention_mask = self.attention_mask.index_select(0, index)


@torch.no_grad()
def prefill(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            share_prefix: bool = False) -> tuple[torch.Tensor, StepState]:
    """Run the prompt; return the last position's logits (B, V) and the state to continue from.
    ``share_prefix``: run the rows' common prefix once (see ``shared_prefix``)."""
    shared = shared_prefix(model, input_ids, attention_mask) if share_prefix else None
    if shared is not None:
        out = model(input_ids=shared.input_ids, attention_mask=shared.attention_mask, position_ids=shared.position_ids,
                    **with_cache(model, shared.cache), logits_to_keep=1)
        return out.logits[:, -1, :], StepState(shared.cache, shared.attention_mask)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        **with_cache(model, cache),
        logits_to_keep=1,
    )
    # transformers' forward already soft-caps (Gemma); only head_logits must do it itself.
    return out.logits[:, -1, :], StepState(cache, attention_mask)


@torch.no_grad()
def step(model: nn.Module, state: StepState, next_tokens: torch.Tensor) -> torch.Tensor:
    """Feed one new token per row (B,); return the next logits (B, V). Updates ``state``."""
    ones = state.attention_mask.new_ones((state.attention_mask.shape[0], 1))
    state.attention_mask = torch.cat([state.attention_mask, ones], dim=1)
    positions = position_ids_from_mask(state.attention_mask)[:, -1:]
    out = model(
        input_ids=next_tokens[:, None],
        attention_mask=state.attention_mask,
        position_ids=positions,
        **with_cache(model, state.past_key_values),
    )
    return out.logits[:, -1, :]


@torch.no_grad()
def prefill_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, StepState]:
    """Like ``prefill`` but returns the last position's hidden state (B, H), skipping the head."""
    cache = DynamicCache(config=model.config)
    out = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        **with_cache(model.base_model, cache),
    )
    return out.last_hidden_state[:, -1, :], StepState(cache, attention_mask)


@torch.no_grad()
def step_hidden(model: nn.Module, state: StepState, next_tokens: torch.Tensor) -> torch.Tensor:
    """Like ``step`` but returns the new hidden state (B, H), skipping the head."""
    ones = state.attention_mask.new_ones((state.attention_mask.shape[0], 1))
    state.attention_mask = torch.cat([state.attention_mask, ones], dim=1)
    out = model.base_model(
        input_ids=next_tokens[:, None],
        attention_mask=state.attention_mask,
        position_ids=position_ids_from_mask(state.attention_mask)[:, -1:],
        **with_cache(model.base_model, state.past_key_values),
    )
    return out.last_hidden_state[:, -1, :]


def head_rows(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, k) of only the tokens ``ids`` (B, k): k rows of the head instead of all V."""
    head = model.get_output_embeddings()
    if hasattr(head, "rows"):  # a head that is not one weight matrix (reweighter.model.TokenVectorHead)
        return _softcap(model, head.rows(hidden, ids))
    weight = head.weight[ids]  # (B, k, H)
    logits = torch.einsum("bh,bkh->bk", hidden.to(weight.dtype), weight)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[ids]
    return _softcap(model, logits)
