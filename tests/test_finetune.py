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
    # a random tiny model's head is the bottleneck, so the head gets adapters too here; lr 5e-2
    # oscillated (2 of 4 outputs right with transformers 5.24 / peft 0.21), 1e-2 converges
    cfg = LoraTrainConfig(epochs=100, batch_size=4, lr=1e-2, rank=16, lora_dropout=0.0, patience=100, progress=False,
                          target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"))
    tuned = finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "lora", cfg)
    assert all(torch.equal(v, bb.model.state_dict()[k]) for k, v in before.items())  # the original is not modified
    prompts = [encode_prompt(bb.tokenizer, TEMPLATE, e.input) for e in EXAMPLES]
    gen = GenerationConfig(max_new_tokens=24)
    enc = encode_all(bb.tokenizer, TEMPLATE, EXAMPLES, 256)
    assert _mean_nll(tuned.model, enc, 4, "cpu") < 0.3 * _mean_nll(bb.model, enc, 4, "cpu")
    # a hundred steps teach even a random 2-layer model the targets: teacher-forced, its top-1 token
    # is the target almost everywhere (free-running text from a random model is too sensitive to
    # optimizer and library versions to threshold; it only has to decode through the adapters)
    assert _top1_accuracy(tuned, enc) >= 0.9 > 0.2 >= _top1_accuracy(bb, enc)
    assert all(g.text for g in Decoder(tuned, config=gen).generate_ids(prompts))
    again = finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "lora", cfg)  # finished: loaded, not retrained
    ids = torch.tensor([prompts[0]])
    torch.testing.assert_close(again.logprobs_at(ids, torch.ones_like(ids)), tuned.logprobs_at(ids, torch.ones_like(ids)))


def _top1_accuracy(blackbox, encoded) -> float:
    """Share of target tokens (EOS included) that are the model's top-1 given the true prefix."""
    hits = total = 0
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        logprobs = blackbox.logprobs_at(ids, torch.ones_like(ids))[0]
        predicted = logprobs[e.prompt_len - 1:-1].argmax(-1)
        hits += int((predicted == ids[0, e.prompt_len:]).sum())
        total += len(e.input_ids) - e.prompt_len
    return hits / total


def test_lora_refuses_bad_settings_and_missing_validation(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        LoraTrainConfig(rank=0)
    with pytest.raises(ValueError, match="held-out"):
        finetune_lora(tiny_blackbox(), EXAMPLES, [], TEMPLATE, tmp_path / "x", LoraTrainConfig(progress=False))


def test_interrupted_lora_resumes_after_its_last_epoch_and_ends_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    import json

    import logitplug.finetune as ft

    bb = tiny_blackbox()
    cfg = LoraTrainConfig(epochs=4, batch_size=2, lr=1e-2, rank=4, lora_dropout=0.0, patience=10, progress=False)
    finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "whole", cfg)
    whole = json.loads((tmp_path / "whole" / ft.DONE_NAME).read_text())

    calls = {"n": 0}
    real = ft._mean_nll

    def interrupted(*args, **kw):  # Ctrl-C during the third epoch's evaluation
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(ft, "_mean_nll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "cut", cfg)
    assert (tmp_path / "cut" / ft.CHECKPOINT_NAME).exists() and not (tmp_path / "cut" / ft.DONE_NAME).exists()
    monkeypatch.setattr(ft, "_mean_nll", real)
    with pytest.raises(ValueError, match="other settings"):  # a checkpoint is not mixed with other settings
        finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "cut", LoraTrainConfig(epochs=4, rank=8, progress=False))
    finetune_lora(bb, EXAMPLES, EXAMPLES, TEMPLATE, tmp_path / "cut", cfg)
    resumed = json.loads((tmp_path / "cut" / ft.DONE_NAME).read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert [h["eval_loss"] for h in resumed["history"]] == pytest.approx([h["eval_loss"] for h in whole["history"]], rel=1e-5)
    assert resumed["best_eval_loss"] == pytest.approx(whole["best_eval_loss"], rel=1e-5)
    assert not (tmp_path / "cut" / ft.CHECKPOINT_NAME).exists()  # a finished run leaves no checkpoint
