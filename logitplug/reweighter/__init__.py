"""The trainable plugin model and its artifact format."""

from .model import Reweighter, ReweighterConfig, TokenizerMismatchError, check_same_tokenizer, read_sidecar

__all__ = ["Reweighter", "ReweighterConfig", "TokenizerMismatchError", "check_same_tokenizer", "read_sidecar"]
