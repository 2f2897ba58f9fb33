import pytest
import torch

from logitplug.data import Example, PromptTemplate, encode_all, encode_prompt
from logitplug.decode import Decoder, GenerationConfig
from logitplug.finetune import LoraTrainConfig, _mean_nll, finetune_lora
from tiny import tiny_blackbox

TEMPLATE = PromptTemplate("t", "Attributes: {input}\nSentence:")
EXAMPLES = [Example(f"name[{w}]", f"{w} is by the river.") for w in ["Aromi", "Cotto", "Zizzi", "Wildwood"]]


def test_lora_learns_the_task_leaves_the_black_box_untouched_and_reloads(tmp_path):
    bb = tiny_blackbox()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    # a random tiny model's head is the bottleneck, so the head gets adapters too here
    cfg = LoraTrainConfig(epochs=100, batch_size=4, lr=5e-2, rank=16, lora_dropout=0.0, patience=100, progress=False,
                          target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"))
    tuned = finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "lora", cfg)
    assert all(torch.equal(v, bb.model.state_dict()[k]) for k, v in before.items())  # the original is not modified
    prompts = [encode_prompt(bb.tokenizer, TEMPLATE, e.input) for e in EXAMPLES]
    gen = GenerationConfig(max_new_tokens=24)
    enc = encode_all(bb.tokenizer, TEMPLATE, EXAMPLES, 256)
    assert _mean_nll(tuned.model, enc, 4, "cpu") < 0.3 * _mean_nll(bb.model, enc, 4, "cpu")
    # a random 2-layer model learns the shared words, not whole sentences, in a hundred steps
    assert sum("river" in g.text for g in Decoder(tuned, config=gen).generate_ids(prompts)) >= 3
    assert not any("river" in g.text for g in Decoder(bb, config=gen).generate_ids(prompts))
    again = finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "lora", cfg)  # finished: loaded, not retrained
    ids = torch.tensor([prompts[0]])
    torch.testing.assert_close(again.logprobs_at(ids, torch.ones_like(ids)), tuned.logprobs_at(ids, torch.ones_like(ids)))


def test_lora_refuses_bad_settings_and_missing_validation(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        LoraTrainConfig(rank=0)
    with pytest.raises(ValueError, match="held-out"):
        finetune_lora(tiny_blackbox(), EXAMPLES, [], TEMPLATE, tmp_path / "x", LoraTrainConfig(progress=False))
