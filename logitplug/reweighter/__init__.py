"""The trainable plugin model and its artifact format."""

from .difference import LogitDifference
from .model import Reweighter, ReweighterConfig, TokenizerMismatchError, check_same_tokenizer, read_sidecar

__all__ = [
    "LogitDifference", "Reweighter", "ReweighterConfig", "TokenizerMismatchError", "check_same_tokenizer", "read_sidecar",
]
