"""A black box seen only through its top-k log-probs, as closed APIs return them.

Wraps any full-vocabulary source and keeps, per position, the top-k tokens (plus the actual next
token when teacher forcing, which an API's ``echo`` also reports), spreading the rest of the mass
uniformly. It measures what top-k access costs against full logits with the same model, and it
is the exact arithmetic the HTTP client (``OpenAIBlackBox``) applies to a server's answers.
"""

from __future__ import annotations

import torch

from ..combine import truncate_to_topk
from .base import BlackBox


class TopKBlackBox(BlackBox):
    full_vocab = False

    def __init__(self, inner: BlackBox, k: int = 20):
        if k < 1:
            raise ValueError(f"top-k access needs k >= 1, got {k}")
        self.inner, self.k = inner, int(k)
        self.top_k = self.k
        self.identity = f"{inner.identity}@top{self.k}"
        self.tokenizer, self.vocab_size = inner.tokenizer, inner.vocab_size
        self.max_context, self.device = inner.max_context, inner.device

    def logprobs_at(self, input_ids, attention_mask, select=None):
        full = self.inner.logprobs_at(input_ids, attention_mask, select)
        nxt = torch.roll(input_ids, shifts=-1, dims=1).to(full.device)
        # the echoed next token exists where the next position is a real token
        has_next = torch.roll(attention_mask, shifts=-1, dims=1).bool() & attention_mask.bool()
        has_next[:, -1] = False
        has_next = has_next.to(full.device)
        if select is not None:
            select = select.to(full.device)
            return truncate_to_topk(full, self.k, nxt[select], has_next[select])
        return truncate_to_topk(full, self.k, nxt, has_next)

    def start(self, input_ids, attention_mask):
        lp, state = self.inner.start(input_ids, attention_mask)
        return truncate_to_topk(lp, self.k), state

    def step(self, state, next_tokens):
        return truncate_to_topk(self.inner.step(state, next_tokens), self.k)
