"""logitplug: adapt black-box language models through their next-token log-probabilities."""

__version__ = "0.1.0"

from .blackbox import BlackBox, LocalBlackBox, OpenAIBlackBox, TopKBlackBox, load_blackbox
from .combine import (
    BlackBoxOnly, CombinationRule, MixtureRule, ProductRule, ReweighterOnly, SupportProductRule, get_rule,
)
from .data import Example, PromptTemplate, get_template
from .decode import Decoder, GenerationConfig, PluginLogitsProcessor, generate
from .reweighter import Reweighter, ReweighterConfig, TokenizerMismatchError
from .train import LoadedPlugin, TrainConfig, TrainingInterrupted, load_plugin, train

__all__ = [
    "BlackBox", "BlackBoxOnly", "CombinationRule", "Decoder", "Example", "GenerationConfig", "LoadedPlugin", "LocalBlackBox",
    "MixtureRule", "OpenAIBlackBox", "PluginLogitsProcessor", "ProductRule", "PromptTemplate", "Reweighter",
    "ReweighterConfig", "ReweighterOnly", "SupportProductRule", "TokenizerMismatchError", "TopKBlackBox", "TrainConfig",
    "TrainingInterrupted", "__version__", "generate", "get_rule", "get_template", "load_blackbox", "load_plugin", "train",
]
