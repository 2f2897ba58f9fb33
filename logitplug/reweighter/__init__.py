"""The trainable plugin model and its artifact format."""

from .difference import LogitDifference
from .ensemble import LogitSum
from .model import WEIGHTS_NAME, Reweighter, ReweighterConfig, TokenizerMismatchError, check_same_tokenizer, read_sidecar

__all__ = [
    "WEIGHTS_NAME", "LogitDifference", "LogitSum", "Reweighter", "ReweighterConfig", "TokenizerMismatchError", "check_same_tokenizer", "read_sidecar",
]
