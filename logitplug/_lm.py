"""Shared stepping helpers for transformers causal LMs (black box and reweighter alike).

Both sides of the product rule are causal LMs that must be run teacher-forced (training) and
incrementally with a KV cache (decoding) over left- or right-padded batches. Keeping the
position-id and cache bookkeeping in one place guarantees that the two models see the same
positions, which is what makes our decoding loop and ``model.generate`` agree token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache


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


def selected_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher-forced logits: (B, T, V), or (N, V) at the True entries of the (B, T) ``select`` mask.

    Selecting before the head skips the vocabulary projection for prompt positions, which is
    most of the cost of a small model with a large vocabulary.
    """
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
def prefill(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, StepState]:
    """Run the prompt; return the last position's logits (B, V) and the state to continue from."""
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    # transformers' forward already soft-caps (Gemma); only head_logits must do it itself.
    return out.logits[:, -1, :], StepState(out.past_key_values, attention_mask)


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
        past_key_values=state.past_key_values,
        use_cache=True,
    )
    state.past_key_values = out.past_key_values
    return out.logits[:, -1, :]


@torch.no_grad()
def prefill_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, StepState]:
    """Like ``prefill`` but returns the last position's hidden state (B, H), skipping the head."""
    cache = DynamicCache(config=model.config)
    out = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        past_key_values=cache,
        use_cache=True,
    )
    return out.last_hidden_state[:, -1, :], StepState(out.past_key_values, attention_mask)


@torch.no_grad()
def step_hidden(model: nn.Module, state: StepState, next_tokens: torch.Tensor) -> torch.Tensor:
    """Like ``step`` but returns the new hidden state (B, H), skipping the head."""
    ones = state.attention_mask.new_ones((state.attention_mask.shape[0], 1))
    state.attention_mask = torch.cat([state.attention_mask, ones], dim=1)
    out = model.base_model(
        input_ids=next_tokens[:, None],
        attention_mask=state.attention_mask,
        position_ids=position_ids_from_mask(state.attention_mask)[:, -1:],
        past_key_values=state.past_key_values,
        use_cache=True,
    )
    state.past_key_values = out.past_key_values
    return out.last_hidden_state[:, -1, :]


def head_rows(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, k) of only the tokens ``ids`` (B, k): k rows of the head instead of all V."""
    head = model.get_output_embeddings()
    weight = head.weight[ids]  # (B, k, H)
    logits = torch.einsum("bh,bkh->bk", hidden.to(weight.dtype), weight)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[ids]
    return _softcap(model, logits)
