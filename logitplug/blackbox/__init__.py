"""Black-box log-probability sources: one interface, several backends."""

from .base import BlackBox, tokenizer_fingerprint
from .local import LocalBlackBox
from .openai_api import BlackBoxUnavailable, OpenAIBlackBox
from .registry import REGISTRY, ensure_converted, load_blackbox, load_tokenizer, logitplug_home, open_endpoint, split_topk
from .topk import TopKBlackBox

__all__ = ["BlackBox", "BlackBoxUnavailable", "LocalBlackBox", "OpenAIBlackBox", "REGISTRY", "TopKBlackBox", "ensure_converted", "load_blackbox", "load_tokenizer", "logitplug_home", "open_endpoint", "split_topk", "tokenizer_fingerprint"]
