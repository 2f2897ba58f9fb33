"""Real-model tests on SmolLM2-135M-Instruct (offline, from the PyPI package). Marked slow."""

from pathlib import Path

import pytest
import torch

from logitplug.blackbox import load_blackbox
from logitplug.data import TEMPLATES, e2e_paper_splits, encode_prompt
from logitplug.decode import Decoder, GenerationConfig
from logitplug.reweighter import Reweighter, ReweighterConfig, read_sidecar
from logitplug.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_blackbox("smollm2-135m")


@pytest.fixture(scope="module")
def e2e():
    return e2e_paper_splits(seed=0)


def test_brief_plugin_training_beats_zero_shot_held_out_loss(smollm2, e2e, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    cfg = TrainConfig(output_dir=str(out / "plugin"), cache_dir=str(out / "cache"), epochs=2, batch_size=8,
                      lr=5e-4, progress=False, checkpoint_every=0)
    result = train(smollm2, e2e["train"][:160], e2e["validation"][:48], TEMPLATES["e2e"], cfg, ReweighterConfig())
    # the held-out rows share no input with the training rows (split by input)
    assert not {r.input for r in e2e["train"][:160]} & {r.input for r in e2e["validation"][:48]}
    assert result.best_loss < result.blackbox_loss
    # the saved plugin loads against the same black box and decodes
    plugin = Reweighter.from_pretrained(result.plugin_dir, smollm2.fingerprint)
    prompt = encode_prompt(smollm2.tokenizer, TEMPLATES["e2e"], e2e["test"][0].input)
    gen = Decoder(smollm2, plugin, config=GenerationConfig(max_new_tokens=24)).generate_ids([prompt])[0]
    assert gen.token_ids and gen.finish_reason in ("eos", "length")


def test_kv_cache_decoding_matches_teacher_forcing_on_smollm2(smollm2, e2e):
    prompt = encode_prompt(smollm2.tokenizer, TEMPLATES["e2e"], e2e["test"][1].input)
    gen = Decoder(smollm2, config=GenerationConfig(max_new_tokens=12)).generate_ids([prompt])[0]
    full = torch.tensor([prompt + gen.token_ids])
    lp = smollm2.logprobs_at(full, torch.ones_like(full))[0]
    greedy = lp[len(prompt) - 1: len(prompt) - 1 + len(gen.token_ids)].argmax(-1).tolist()
    assert greedy == gen.token_ids


def test_shared_demonstration_prefix_gives_the_same_outputs_on_smollm2(smollm2, e2e):
    """Fixed demonstrations are computed once per batch; the generated text and the training
    log-probs must not change (beyond float rounding)."""
    template = TEMPLATES["e2e"].with_demonstrations(e2e["train"][:2])
    prompts = [encode_prompt(smollm2.tokenizer, template, ex.input) for ex in e2e["test"][:4]]
    cfg = GenerationConfig(max_new_tokens=16, repetition_penalty=1.1, batch_size=4)
    try:
        smollm2.share_prefix = False
        want = [g.token_ids for g in Decoder(smollm2, config=cfg).generate_ids(prompts)]
        smollm2.share_prefix = True
        got = [g.token_ids for g in Decoder(smollm2, config=cfg).generate_ids(prompts)]
    finally:
        smollm2.share_prefix = True
    assert got == want


def test_converted_model_matches_the_gguf_original(smollm2):
    from logitplug.blackbox.registry import REGISTRY

    gguf = REGISTRY["smollm2-135m"].locate_gguf(None)
    original = load_blackbox(str(gguf))
    ids = torch.tensor([smollm2.tokenizer("name[Aromi], eatType[coffee shop]")["input_ids"]])
    mask = torch.ones_like(ids)
    assert torch.allclose(original.logprobs_at(ids, mask), smollm2.logprobs_at(ids, mask), atol=1e-4)
    assert original.fingerprint.split("|tok:")[1] == smollm2.fingerprint.split("|tok:")[1]


def test_main_job_runs_end_to_end_at_small_scale(tmp_path, capsys):
    from logitplug.quickstart import run_quickstart

    # answers cut at 16 tokens: this checks the whole flow, not the text (the strength and reweighter
    # choices decode every held-out input at six strengths, twice)
    report = run_quickstart(None, tmp_path, "smollm2-135m", train_rows=24, eval_rows=8, test_inputs=4, epochs=1,
                            max_new_tokens=16)
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "plugin" in printed and "BLEU" in printed
    assert set(report["scores"]) == {"zero-shot", "1-shot", "plugin"}  # the default recipe adds a demonstration
    assert report["recipe"]["name"] == "logitplug" and report["train_rows"] == 23
    assert len(report["generations"]) == 4
    assert (tmp_path / "results.json").exists()
    assert (Path(report["plugin_dir"]) / "logitplug.json").exists() and str(report["plugin_dir"]) in printed
    # the default recipe trains a second plugin on SmolLM2's own token vectors and keeps the best held-out
    # text; a third over the whole vocabulary at black-box weight 0.5 (without the demonstration) only where
    # fewer than 85% of the training targets lie in SmolLM2's top 20, which E2E's rarely do not
    choice = report["reweighter_choice"]
    assert {"default", "token-vectors"} <= set(choice["held_out_mix"]) and "kept the" in printed
    tried = choice["support_coverage"] < 0.85
    assert ("blackbox-weight-0.5" in choice["held_out_mix"]) == tried
    if tried:
        whole = read_sidecar(Path(report["plugin_dir"]) / "candidates" / "blackbox-weight-0.5")
        assert whole["template"]["demos"] == [] and whole["train_config"]["blackbox_weight"] == 0.5
    else:
        assert "top-20" in choice["not_tried"]["blackbox-weight-0.5"] and "not tried" in printed
    kept = Path(report["plugin_dir"]) / "candidates" / choice["chosen"]
    assert (kept / "model.safetensors").read_bytes() == (Path(report["plugin_dir"]) / "model.safetensors").read_bytes()
    # the plugin is decoded behind the prompt its kept reweighter trained under
    assert report["plugin_demonstrations"] == len(read_sidecar(kept)["template"]["demos"])
    # a plugin made with other settings is never reused: another seed (and, to keep this short, the
    # paper's recipe: one training, no held-out decoding) trains into another folder
    again = run_quickstart(None, tmp_path, "smollm2-135m", train_rows=24, eval_rows=8, test_inputs=2, epochs=1, seed=1,
                           recipe="paper", max_new_tokens=16)
    assert again["plugin_dir"] != report["plugin_dir"]


def test_client_against_our_server_serving_smollm2_matches_local_access(smollm2, e2e, tmp_path):
    """Loopback over real HTTP: the same next-token log-probs (top-20) and the same greedy text."""
    from logitplug.blackbox import OpenAIBlackBox, TopKBlackBox
    from logitplug.serve import ServeConfig, create_app
    from loopback import serving

    with serving(create_app(smollm2, config=ServeConfig(model_name="smollm2-135m"))) as url:
        remote = OpenAIBlackBox(url, "smollm2-135m", smollm2.tokenizer, top_k=20,
                                cache_dir=tmp_path / "responses", vocab_size=smollm2.vocab_size)
        local = TopKBlackBox(smollm2, 20)
        prompt = encode_prompt(smollm2.tokenizer, TEMPLATES["e2e"], e2e["test"][0].input)
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)
        torch.testing.assert_close(remote.logprobs_at(ids, mask), local.logprobs_at(ids, mask), atol=1e-4, rtol=1e-4)
        full = smollm2.logprobs_at(ids, mask)[0, -1]
        top = full.topk(20)
        got, _ = remote.start(ids, mask)
        torch.testing.assert_close(got[0, top.indices], top.values, atol=1e-4, rtol=1e-4)
        gen = GenerationConfig(max_new_tokens=20)
        assert Decoder(remote, config=gen).generate_ids([prompt])[0].text == \
            Decoder(smollm2, config=gen).generate_ids([prompt])[0].text


def test_lora_fine_tunes_the_converted_smollm2(smollm2, e2e, tmp_path):
    from logitplug.finetune import LoraTrainConfig, finetune_lora

    tuned = finetune_lora(smollm2, e2e["train"][:8], e2e["validation"][:4], TEMPLATES["e2e"], tmp_path / "lora",
                          LoraTrainConfig(epochs=1, batch_size=4, progress=False))
    ids = torch.tensor([encode_prompt(smollm2.tokenizer, TEMPLATES["e2e"], e2e["test"][0].input)])
    mask = torch.ones_like(ids)
    assert not torch.allclose(tuned.logprobs_at(ids, mask), smollm2.logprobs_at(ids, mask))  # the adapters act
    assert (tmp_path / "lora" / "finetune.json").exists()
