"""A local transformers causal LM used as if it were closed: only its log-probs leave it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _lm
from .base import BlackBox


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LocalBlackBox(BlackBox):
    """Full-vocabulary log-probs from a transformers causal LM, with a KV cache for decoding.

    fp32 on CPU, half precision on GPU (the log-softmax is always taken in fp32). Rows of a batch
    that start with the same tokens (a template, fixed demonstrations) have that prefix computed
    once per batch (``share_prefix``; same numbers to float rounding).
    """

    full_vocab = True
    share_prefix = True

    def __init__(self, model: nn.Module, tokenizer: Any, identity: str, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, identity: str | None = None, device: torch.device | str | None = None
    ) -> "LocalBlackBox":
        """Load a transformers folder, or a ``.gguf`` file (dequantized on load; slow, see registry)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"black box model path does not exist: {path}. Give a transformers model folder, a .gguf file, "
                "or a registered name (see `logitplug env`)."
            )
        device = torch.device(device) if device is not None else default_device()
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        kwargs: dict[str, Any] = {}
        folder = path
        if path.is_file():
            if path.suffix != ".gguf":
                raise ValueError(f"a black box file must be a .gguf file, got {path}")
            folder, kwargs = path.parent, {"gguf_file": path.name}
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
        return cls(model, tokenizer, identity or path.name, device)

    @torch.no_grad()
    def logprobs_at(self, input_ids, attention_mask, select=None):
        logits = _lm.selected_logits(self.model, input_ids.to(self.device), attention_mask.to(self.device),
                                     None if select is None else select.to(self.device), self.share_prefix)
        return torch.log_softmax(logits.float(), dim=-1)

    def start(self, input_ids, attention_mask):
        logits, state = _lm.prefill(self.model, input_ids.to(self.device), attention_mask.to(self.device),
                                    self.share_prefix)
        return torch.log_softmax(logits.float(), dim=-1), state

    def step(self, state, next_tokens):
        return torch.log_softmax(_lm.step(self.model, state, next_tokens.to(self.device)).float(), dim=-1)
