"""Tiny random-weight models and a real (trained-in-seconds) byte-level tokenizer for fast tests."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from logitplug.blackbox import LocalBlackBox

CORPUS = [
    "name[Aromi], eatType[coffee shop], area[city centre]",
    "Aromi is a coffee shop in the city centre.",
    "name[Blue Spice], food[Italian], priceRange[cheap]",
    "Blue Spice serves cheap Italian food.",
    "The Eagle is a family friendly pub near the river.",
] * 20


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)), eos_token="<eos>", pad_token="<pad>"
    )


def tiny_blackbox(seed: int = 0, vocab_size: int = 320, identity: str = "tiny-bb") -> LocalBlackBox:
    tok = tiny_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LocalBlackBox(LlamaForCausalLM(config), tok, identity, device="cpu")
