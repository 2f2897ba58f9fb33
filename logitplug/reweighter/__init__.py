"""The trainable plugin model and its artifact format."""

from .difference import LogitDifference
from .model import WEIGHTS_NAME, Reweighter, ReweighterConfig, TokenizerMismatchError, check_same_tokenizer, read_sidecar

__all__ = [
    "WEIGHTS_NAME", "LogitDifference", "Reweighter", "ReweighterConfig", "TokenizerMismatchError", "check_same_tokenizer", "read_sidecar",
]
