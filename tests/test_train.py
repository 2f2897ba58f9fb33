import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from logitplug.data import Example, PromptTemplate, encode_all, encode_prompt
from logitplug.combine import ProductRule
from logitplug.decode import Decoder, GenerationConfig
from logitplug.reweighter import Reweighter, ReweighterConfig, read_sidecar
from logitplug.train import TrainConfig, TrainingInterrupted, _Losses, train
from tiny import tiny_blackbox

TEMPLATE = PromptTemplate("t", "Attributes: {input}\nSentence:")
WORDS = ["Aromi", "Blue Spice", "The Eagle", "Cotto", "Zizzi", "Wildwood", "Fitzbillies", "Alimentum"]
EXAMPLES = [Example(f"name[{w}], n[{i}]", f"{w} is place {i} near the river.") for i, w in enumerate(WORDS)]
SMALL = ReweighterConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "plugin"), cache_dir=str(tmp_path / "cache"), batch_size=4, lr=1e-2,
                weight_decay=0.0, warmup_ratio=0.0, progress=False, patience=1000, checkpoint_every=0)
    return TrainConfig(**{**base, **kw})


def test_plugin_overfits_eight_examples_and_greedy_reproduces_them(tmp_path):
    bb = tiny_blackbox()
    result = train(bb, EXAMPLES, EXAMPLES, TEMPLATE, _config(tmp_path, epochs=120), SMALL)
    assert result.best_loss < 0.05 < result.blackbox_loss
    rw = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    prompts = [encode_prompt(bb.tokenizer, TEMPLATE, e.input) for e in EXAMPLES]
    for strategy in ("greedy", "beam"):
        gens = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=40, strategy=strategy, num_beams=3)).generate_ids(prompts)
        assert [g.text for g in gens] == [e.target for e in EXAMPLES]
        assert all(g.finish_reason == "eos" for g in gens)
    assert not (result.plugin_dir / "checkpoint").exists()
    assert not (result.plugin_dir / "best").exists()  # the kept epoch is the folder itself; no second copy
    with pytest.raises(FileExistsError, match="already holds a trained plugin"):
        train(bb, EXAMPLES, EXAMPLES, TEMPLATE, _config(tmp_path, epochs=1), SMALL)


@pytest.mark.parametrize("vectors", [False, True], ids=["own-vectors", "token-vectors"])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, vectors):
    bb = tiny_blackbox()
    rcfg = SMALL
    if vectors:  # the frozen table is in no checkpoint: resuming reads it again from its source
        bb.model.save_pretrained(tmp_path / "lm")
        rcfg = replace(SMALL, token_vectors_from=str(tmp_path / "lm"))
    reference = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "a", epochs=4), rcfg)

    def interrupt(state):
        if state.global_step == 5:  # mid-epoch 3 (2 steps per epoch with batch 4)
            raise KeyboardInterrupt

    cfg = _config(tmp_path / "b", epochs=4)
    with pytest.raises(TrainingInterrupted, match="Run the same command again"):
        train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, rcfg, callbacks=[interrupt])
    assert (Path(cfg.output_dir) / "checkpoint" / "trainer_state.json").exists()
    saved = [load_file(str(f)) for f in (Path(cfg.output_dir) / "checkpoint").glob("*.safetensors")]
    holds_a_vocabulary_table = any(v.shape[0] == bb.vocab_size for state in saved for v in state.values())
    assert saved and holds_a_vocabulary_table != vectors  # own embeddings are trained weights; the frozen table is not
    with pytest.raises(ValueError, match="other settings"):
        train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "b", epochs=4, lr=0.5), rcfg)
    resumed = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, rcfg)
    assert [h["eval_loss"] for h in resumed.history] == pytest.approx([h["eval_loss"] for h in reference.history], rel=1e-6)
    a = load_file(str(reference.plugin_dir / "model.safetensors"))
    b = load_file(str(resumed.plugin_dir / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_evaluations_within_an_epoch_keep_the_best_point_and_resume_exactly(tmp_path):
    bb = tiny_blackbox()
    cfg = _config(tmp_path / "a", epochs=2, evals_per_epoch=2)  # 2 steps per epoch: evaluate after each
    reference = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, SMALL)
    assert [h["epoch"] for h in reference.history] == [0.5, 1, 1.5, 2]
    assert [h["step"] for h in reference.history] == [1, 2, 3, 4]
    best = min(reference.history, key=lambda h: h["eval_loss"])
    assert read_sidecar(reference.plugin_dir)["best_epoch"] == best["epoch"]

    def interrupt(state):
        if state.global_step == 3:  # after the step, before the evaluation due at epoch 1.5
            raise KeyboardInterrupt

    cfg_b = _config(tmp_path / "b", epochs=2, evals_per_epoch=2)
    with pytest.raises(TrainingInterrupted):
        train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg_b, SMALL, callbacks=[interrupt])
    resumed = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg_b, SMALL)
    assert [h["epoch"] for h in resumed.history] == [0.5, 1, 1.5, 2]
    assert [h["eval_loss"] for h in resumed.history] == pytest.approx([h["eval_loss"] for h in reference.history], rel=1e-6)

    # patience counts evaluations: a learning rate that only makes things worse stops after two
    worse = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "c", epochs=4, evals_per_epoch=2, lr=5.0, patience=1), SMALL)
    assert len(worse.history) < 8


def test_on_the_fly_and_cached_training_agree_when_cache_is_complete(tmp_path):
    bb = tiny_blackbox()
    exact = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "a", epochs=2, cache=False), SMALL)
    cached = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE,
                   _config(tmp_path / "b", epochs=2, cache_top_k=bb.vocab_size), SMALL)
    assert exact.history[-1]["eval_loss"] == pytest.approx(cached.history[-1]["eval_loss"], rel=1e-4)
    assert cached.cache_hits > 0


def test_bad_inputs(tmp_path):
    bb = tiny_blackbox()
    with pytest.raises(ValueError, match="held-out"):
        train(bb, EXAMPLES, [], TEMPLATE, _config(tmp_path, epochs=1), SMALL)
    with pytest.raises(ValueError, match="lr must be > 0"):
        _config(tmp_path, lr=0.0)


def test_same_command_runs_under_torchrun_with_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_train import EXAMPLES, TEMPLATE, SMALL, _config\n"
        "from tiny import tiny_blackbox\n"
        "from logitplug.train import train\n"
        "from pathlib import Path\n"
        f"r = train(tiny_blackbox(), EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(Path({str(tmp_path)!r}), epochs=3), SMALL)\n"
        "import os\n"
        f"Path({str(tmp_path)!r}, 'rank' + os.environ['RANK']).write_text(f'{{r.best_loss}} {{r.blackbox_loss}}')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561", str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each rank writes its own file: two processes sharing one stdout pipe can interleave lines.
    losses = [(tmp_path / f"rank{rank}").read_text().split() for rank in (0, 1)]
    assert len(losses) == 2 and losses[0] == losses[1]  # both ranks agree on the reduced held-out loss
    assert float(losses[0][0]) < float(losses[0][1])
    assert (tmp_path / "plugin" / "model.safetensors").exists()


def test_distill_objective_trains_the_reweighter_to_imitate_the_black_box(tmp_path):
    bb = tiny_blackbox()
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=30, rule="reweighter", objective="distill"), SMALL)
    rw = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    fresh = Reweighter.build(SMALL, bb.vocab_size, bb.tokenizer, seed=0)
    ids = torch.tensor([encode_prompt(bb.tokenizer, TEMPLATE, EXAMPLES[0].input) + [5, 6, 7]])
    mask = torch.ones_like(ids)
    p_bb = bb.logprobs_at(ids, mask)

    def kl(model):
        with torch.no_grad():
            return float((p_bb.exp() * (p_bb - torch.log_softmax(model(ids, mask), -1))).sum(-1).mean())

    assert kl(rw) < 0.5 * kl(fresh)
    # the recorded reference is the black box's entropy, which a cross-entropy from it never goes below
    assert all(h["eval_loss"] >= h["blackbox_eval_loss"] - 1e-5 for h in result.history)
    assert result.history[-1]["eval_loss"] - result.history[-1]["blackbox_eval_loss"] < 0.05
    with pytest.raises(ValueError, match="rule='reweighter'"):
        _config(tmp_path, objective="distill")


def test_the_distilled_models_reference_loss_is_the_black_boxs_entropy_not_its_target_nll():
    # a peaked black box that gives the targets little mass: entropy and target NLL far apart
    bb = torch.log_softmax(torch.tensor([[6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0]]), -1)
    targets = torch.tensor([3, 2])
    entropy = float(-(bb.exp() * bb).sum())
    distill = _Losses(None, None, 4, sparse=False, objective="distill")
    mle = _Losses(None, None, 4, sparse=False, objective="mle")
    assert float(distill.blackbox_nll(bb, targets)) == pytest.approx(entropy)
    assert float(mle.blackbox_nll(bb, targets)) == pytest.approx(float(-(bb[0, 3] + bb[1, 2])))
    assert float(mle.blackbox_nll(bb, targets)) > 5 * entropy


def test_support_k_trains_through_the_topk_rule_and_the_plugin_remembers_it(tmp_path):
    from logitplug.combine import SupportProductRule
    from logitplug.train import trained_rule

    bb = tiny_blackbox()
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=3, support_k=8), SMALL)
    assert result.best_loss < result.blackbox_loss
    rule = trained_rule(result.plugin_dir)
    assert isinstance(rule, SupportProductRule) and rule.k == 8
    with pytest.raises(ValueError, match="support_k"):
        _config(tmp_path, support_k=8, rule="mixture")


def test_load_plugin_gives_the_trained_rule_prompt_and_weights_and_refuses_another_tokenizer(tmp_path):
    from logitplug.reweighter import TokenizerMismatchError
    from logitplug.train import load_plugin

    bb = tiny_blackbox()
    prompted = replace(TEMPLATE, demos=((EXAMPLES[0].input, EXAMPLES[0].target),))
    result = train(bb, EXAMPLES[1:], EXAMPLES[:4], prompted, _config(tmp_path, epochs=1, support_k=8, alpha=0.5), SMALL)
    loaded = load_plugin(result.plugin_dir, bb)
    assert loaded.rule.k == 8 and loaded.rule.alpha == 0.5
    assert loaded.template == prompted  # the demonstrations it trained behind come back with it
    ids = torch.tensor([[1, 2, 3]])
    saved = Reweighter.from_pretrained(result.plugin_dir)
    assert torch.equal(loaded.reweighter(ids, torch.ones_like(ids)), saved(ids, torch.ones_like(ids)))
    with pytest.raises(TokenizerMismatchError):
        load_plugin(result.plugin_dir, tiny_blackbox(vocab_size=300))
    with pytest.raises(FileNotFoundError, match="not a logitplug plugin folder"):
        load_plugin(tmp_path, bb)


def test_a_plugin_trusting_the_black_box_less_trains_and_decodes_through_the_weighted_rule(tmp_path):
    from logitplug.blackbox import TopKBlackBox
    from logitplug.train import trained_rule

    bb = tiny_blackbox()
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=3, blackbox_weight=0.5), SMALL)
    rule = trained_rule(result.plugin_dir)
    assert isinstance(rule, ProductRule) and rule.blackbox_weight == 0.5
    assert result.best_loss < result.blackbox_loss
    # a top-k black box keeps the whole-vocabulary rule (over its densified answers) instead of a support
    top5 = TopKBlackBox(bb, k=5)
    closed = train(top5, EXAMPLES, EXAMPLES[:4], TEMPLATE,
                   _config(tmp_path, output_dir=str(tmp_path / "closed"), cache_dir=str(tmp_path / "closed-cache"), epochs=1,
                           blackbox_weight=0.5), SMALL)
    assert type(trained_rule(closed.plugin_dir)) is ProductRule
    for bad in (dict(blackbox_weight=0.0), dict(blackbox_weight=1.5), dict(blackbox_weight=0.5, support_k=8),
                dict(blackbox_weight=0.5, rule="mixture")):
        with pytest.raises(ValueError, match="blackbox_weight"):
            _config(tmp_path, **bad)


def test_a_support_wider_than_a_topk_black_box_returns_is_cut_to_it(tmp_path):
    from logitplug.blackbox import TopKBlackBox
    from logitplug.train import trained_rule

    top5 = TopKBlackBox(tiny_blackbox(), k=5)
    result = train(top5, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=1, support_k=20), SMALL)
    assert trained_rule(result.plugin_dir).k == 5


def test_selection_by_a_text_metric_keeps_the_epoch_with_the_best_score(tmp_path):
    import json

    from logitplug.selection import text_metric_selector

    bb = tiny_blackbox()
    cfg = _config(tmp_path, epochs=4, select_by="BLEU", select_inputs=4)
    scores = iter([10.0, 40.0, 20.0, 30.0])  # a stand-in scorer with a known best epoch (2)
    seen = []

    def selector(rw):
        seen.append(rw.training)
        return next(scores)

    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, SMALL, selector=selector)
    sidecar = json.loads((result.plugin_dir / "logitplug.json").read_text())
    assert sidecar["best_epoch"] == 2 and sidecar["selection"] == {"by": "BLEU", "value": 40.0}
    assert seen == [False] * 4  # scored in eval mode
    history = json.loads((result.plugin_dir / "history.json").read_text())
    assert [h["validation_BLEU"] for h in history] == [10.0, 40.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="needs a selector"):
        train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "b", select_by="BLEU"), SMALL)
    with pytest.raises(ValueError, match="select_by must be"):
        _config(tmp_path, select_by="accuracy")
    # the real scorer decodes held-out inputs and scores them against their references
    scorer = text_metric_selector(bb, TEMPLATE, EXAMPLES[:2], "ROUGE-L", ProductRule(),
                                  GenerationConfig(max_new_tokens=40), max_inputs=2)
    from logitplug.eval import evaluate

    trained = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    prompts = [encode_prompt(bb.tokenizer, TEMPLATE, e.input) for e in EXAMPLES[:2]]
    outputs = [g.text for g in Decoder(bb, trained, ProductRule(), GenerationConfig(max_new_tokens=40)).generate_ids(prompts)]
    want = evaluate(outputs, [[e.target] for e in EXAMPLES[:2]], ["ROUGE-L"])["ROUGE-L"].score
    assert scorer(trained) == pytest.approx(want)


def test_a_smoothed_text_choice_passes_over_a_lone_spike_and_keeps_that_epochs_weights(tmp_path):
    bb = tiny_blackbox()
    raw = [10.0, 40.0, 5.0, 25.0, 30.0, 28.0, 12.0, 11.0]  # epoch 2 a spike; 4-6 good together
    scores = iter(raw)
    cfg = _config(tmp_path / "smooth", epochs=9, select_by="BLEU", select_window=3, patience=3)
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, SMALL, selector=lambda rw: next(scores))
    sidecar = read_sidecar(result.plugin_dir)
    # centred means 20, 18.3, 23.3, 20, 27.7, 23.3, 17, 11.3 (epoch 6 led for a while on 30, 28, 28): epoch 5,
    # and three evaluations without a better mean stop training before the ninth epoch
    assert sidecar["best_epoch"] == 5 and len(result.history) == 8
    assert sidecar["selection"]["value"] == 30.0 and sidecar["selection"]["smoothed"] == pytest.approx(83 / 3)
    assert not (result.plugin_dir / "evaluations").exists() and not (result.plugin_dir / "best").exists()
    # the weights are epoch 5's: the same run choosing epoch 5 on its own score keeps the same tensors
    spike = iter([0.0, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0, 0.0, 0.0])  # the same epochs: the same learning-rate schedule
    plain = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, replace(cfg, output_dir=str(tmp_path / "plain"), select_window=1,
                  patience=1000), SMALL, selector=lambda rw: next(spike))
    assert read_sidecar(plain.plugin_dir)["best_epoch"] == 5
    a, b = load_file(str(result.plugin_dir / "model.safetensors")), load_file(str(plain.plugin_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # interrupted mid-epoch 5, before its evaluation: the kept evaluations' weights wait on disk for the resumed run
    scores = iter(raw)

    def interrupt(state):
        if state.global_step == 9:
            raise KeyboardInterrupt

    cut = replace(cfg, output_dir=str(tmp_path / "cut"))
    with pytest.raises(TrainingInterrupted):
        train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cut, SMALL, selector=lambda rw: next(scores), callbacks=[interrupt])
    assert sorted(p.name for p in (Path(cut.output_dir) / "evaluations").iterdir()) == ["0", "1", "2", "3"]
    resumed = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cut, SMALL, selector=lambda rw: next(scores))
    assert read_sidecar(resumed.plugin_dir)["best_epoch"] == 5 and len(resumed.history) == 8
    c = load_file(str(resumed.plugin_dir / "model.safetensors"))
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    with pytest.raises(ValueError, match="select_window must be odd"):
        _config(tmp_path, select_window=2)


def test_a_gated_reweighter_trains_its_gate(tmp_path):
    bb = tiny_blackbox()
    cfg = ReweighterConfig(num_layers=1, hidden_size=64, num_heads=4, intermediate_size=128, gate=True)
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=5), cfg)
    assert result.best_loss < result.blackbox_loss
    rw = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    assert rw.gate is not None and float(rw.gate.weight.abs().sum()) > 0  # the gate received gradients


def test_the_copy_feature_trains_and_decodes_through_the_topk_rule(tmp_path):
    from logitplug.combine import SupportProductRule

    bb = tiny_blackbox()
    cfg = ReweighterConfig(num_layers=1, hidden_size=64, num_heads=4, intermediate_size=128, copy_feature=True)
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=5), cfg)
    rw = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    assert result.best_loss < result.blackbox_loss and float(rw.copy.weight.abs().sum()) > 0
    prompts = [encode_prompt(bb.tokenizer, TEMPLATE, e.input) for e in EXAMPLES[:2]]
    gens = Decoder(bb, rw, SupportProductRule(8), GenerationConfig(max_new_tokens=8)).generate_ids(prompts)
    assert all(g.token_ids for g in gens)


def test_a_zero_initialised_plugin_is_kept_only_if_training_beats_the_black_box(tmp_path):
    from dataclasses import replace

    bb = tiny_blackbox()
    zero = replace(SMALL, zero_init_head=True)
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=2), zero)
    first = result.history[0]
    assert first["epoch"] == 0 and first["eval_loss"] == pytest.approx(first["blackbox_eval_loss"], abs=1e-5)
    assert result.best_loss <= first["eval_loss"] + 1e-9 and len(result.history) == 3
    # a learning rate far too high for this data: whatever it learns, the kept plugin is no worse than the black box
    bad = train(bb, EXAMPLES, EXAMPLES[4:8], TEMPLATE, _config(tmp_path / "bad", epochs=2, lr=5.0), zero)
    assert bad.best_loss <= bad.blackbox_loss + 1e-5


def test_alpha_grid_picks_the_strength_with_the_lowest_held_out_loss_and_the_plugin_decodes_with_it(tmp_path):
    from logitplug.train import trained_rule

    bb = tiny_blackbox()
    # held-out rows unlike the training rows: full strength overshoots, a weaker one is best
    held_out = [Example(f"name[{w}], n[{i}]", f"The {w} is not near anything.") for i, w in enumerate(WORDS)]
    grid = (0.0, 0.25, 0.5, 1.0)
    result = train(bb, EXAMPLES, held_out, TEMPLATE, _config(tmp_path, epochs=3, alpha_grid=grid), SMALL)
    for record in result.history:
        by_alpha = record["eval_loss_by_alpha"]
        assert set(by_alpha) == {"0", "0.25", "0.5", "1"}
        assert by_alpha["0"] == pytest.approx(record["blackbox_eval_loss"], rel=1e-5)  # strength 0: the black box
        assert record["eval_loss"] == min(by_alpha.values())
        assert by_alpha[f"{record['alpha']:g}"] == record["eval_loss"]
        accuracy = record["eval_accuracy_by_alpha"]  # teacher-forced top-1 accuracy, per strength
        assert set(accuracy) == set(by_alpha) and all(0 <= v <= 1 for v in accuracy.values())
    # at strength 0 the rule is the black box alone, whatever the weights: the same every epoch
    assert len({r["eval_accuracy_by_alpha"]["0"] for r in result.history}) == 1
    best = min(result.history, key=lambda r: r["eval_loss"])
    assert result.best_loss == pytest.approx(best["eval_loss"])
    rule = trained_rule(result.plugin_dir)
    assert rule.alpha == best["alpha"]
    with pytest.raises(ValueError, match="alpha_grid"):
        _config(tmp_path, alpha_grid=(0.5,), select_by="BLEU")
    with pytest.raises(ValueError, match="alpha_grid"):
        _config(tmp_path, alpha_grid=(-1.0,))


def test_strength_by_a_text_metric_decodes_at_each_candidate_and_keeps_the_best(tmp_path):
    from logitplug.train import trained_rule

    bb = tiny_blackbox()
    tried = []

    def score(reweighter, rule):  # a stand-in for held-out BLEU that peaks at strength 1.5
        assert isinstance(reweighter, Reweighter)
        tried.append(rule.alpha)
        return -abs(rule.alpha - 1.5)

    cfg = _config(tmp_path, epochs=2, alpha_grid=(0.0, 0.5, 1.0), strength_by="BLEU", strength_candidates=(1.0, 1.5))
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, SMALL, strength_selector=score)
    by_loss = min(result.history, key=lambda r: r["eval_loss"])["alpha"]
    assert sorted(tried) == sorted({1.0, 1.5, by_loss})  # the candidates and the loss's own choice
    assert trained_rule(result.plugin_dir).alpha == 1.5
    chosen = read_sidecar(result.plugin_dir)["strength_selection"]
    assert chosen["by"] == "BLEU" and chosen["by_loss"] == by_loss and set(chosen["scores"]) == {f"{a:g}" for a in tried}
    with pytest.raises(ValueError, match="strength_selector|scorer"):
        train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, replace(cfg, output_dir=str(tmp_path / "again")), SMALL)
    with pytest.raises(ValueError, match="strength_by"):
        _config(tmp_path, strength_by="BLEU")  # nothing to try
    with pytest.raises(ValueError, match="strength_by"):
        _config(tmp_path, strength_by="vibes", alpha_grid=(1.0,))


def test_the_strength_choice_keeps_the_held_out_text_it_scored(tmp_path):
    import json

    from logitplug.eval import rouge_l
    from logitplug.selection import held_out_scorers
    from logitplug.train import STRENGTH_OUTPUTS_NAME

    bb = tiny_blackbox()
    cfg = _config(tmp_path, epochs=1, alpha_grid=(1.0,), strength_by="BLEU+ROUGE-L", strength_candidates=(0.0, 1.0))
    scorers = held_out_scorers(cfg, bb, TEMPLATE, EXAMPLES[:4], GenerationConfig(max_new_tokens=6))
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, SMALL, **scorers)
    kept = json.loads((result.plugin_dir / STRENGTH_OUTPUTS_NAME).read_text())
    assert kept["inputs"] == [e.input for e in EXAMPLES[:4]] and kept["references"] == [[e.target] for e in EXAMPLES[:4]]
    assert set(kept["outputs"]) == {"0", "1"} and all(len(texts) == 4 for texts in kept["outputs"].values())
    chosen = read_sidecar(result.plugin_dir)["strength_selection"]["scores"]
    for strength, texts in kept["outputs"].items():  # the stored texts are the ones the choice scored
        assert rouge_l(texts, kept["references"]).score == pytest.approx(chosen[strength]["ROUGE-L"])


def test_strength_by_a_metric_mix_weighs_each_metric_by_its_share_of_the_best(tmp_path):
    from logitplug.train import _shares_of_best, trained_rule

    # BLEU alone would take 1.5; the mix takes 1.0, which gives up little BLEU for much CIDEr
    table = {0.5: {"BLEU": 20.0, "CIDEr": 1.0}, 1.0: {"BLEU": 29.0, "CIDEr": 1.3}, 1.5: {"BLEU": 30.0, "CIDEr": 0.9}}
    shares = _shares_of_best(table)
    assert max(shares, key=shares.get) == 1.0 and shares[1.0] == pytest.approx((29 / 30 + 1) / 2)

    def score(reweighter, rule):
        return table.get(rule.alpha, {"BLEU": 0.0, "CIDEr": 0.0})

    bb = tiny_blackbox()
    cfg = _config(tmp_path, epochs=1, alpha_grid=(0.5,), strength_by="BLEU+CIDEr", strength_candidates=(0.5, 1.0, 1.5))
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, cfg, SMALL, strength_selector=score)
    assert trained_rule(result.plugin_dir).alpha == 1.0
    chosen = read_sidecar(result.plugin_dir)["strength_selection"]
    assert chosen["scores"]["1.5"] == {"BLEU": 30.0, "CIDEr": 0.9} and max(chosen["combined"], key=chosen["combined"].get) == "1"
    with pytest.raises(ValueError, match="strength_by"):
        _config(tmp_path, strength_by="BLEU+vibes", alpha_grid=(1.0,))
    # the strength trained through (1) stands unless another leads by more than the margin
    from logitplug.train import choose_strength

    close = {0.5: {"BLEU": 30.0, "CIDEr": 1.0}, 1.0: {"BLEU": 29.4, "CIDEr": 1.0}}  # 0.5 leads by 1%
    pick = lambda r, rule: close[rule.alpha]  # noqa: E731
    for margin, want in ((0.0, 0.5), (0.02, 1.0)):
        choose_strength(result.plugin_dir, bb, replace(cfg, strength_candidates=(0.5, 1.0), alpha_grid=(),
                                                       strength_margin=margin), pick)
        assert trained_rule(result.plugin_dir).alpha == want
    with pytest.raises(ValueError, match="strength_margin"):
        _config(tmp_path, strength_by="BLEU", alpha_grid=(1.0,), strength_margin=1.5)


def test_support_eos_puts_eos_in_the_trained_and_decoded_support(tmp_path):
    from logitplug.combine import SupportProductRule
    from logitplug.train import trained_rule

    bb = tiny_blackbox()
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=3, support_k=8, support_eos=True), SMALL)
    assert result.best_loss < result.blackbox_loss
    rule = trained_rule(result.plugin_dir, bb.tokenizer.eos_token_id)
    assert isinstance(rule, SupportProductRule) and rule.always == bb.tokenizer.eos_token_id
    with pytest.raises(ValueError, match="eos_token_id"):
        trained_rule(result.plugin_dir)
    rw = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    prompts = [encode_prompt(bb.tokenizer, TEMPLATE, e.input) for e in EXAMPLES[:2]]
    gens = Decoder(bb, rw, rule, GenerationConfig(max_new_tokens=8)).generate_ids(prompts)  # sparse path: k + 1 rows
    assert all(len(g.token_ids) >= 1 for g in gens)
    # over the whole vocabulary EOS is reweighted anyway: the setting changes nothing
    assert type(_config(tmp_path, support_eos=True).combination()) is type(_config(tmp_path).combination())


def test_a_plugin_neutral_on_unseen_tokens_learns_their_level_and_knows_its_common_targets(tmp_path):
    bb = tiny_blackbox()
    cfg = ReweighterConfig(num_layers=1, hidden_size=64, num_heads=4, intermediate_size=128, neutral_unseen=True)
    result = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=5), cfg)
    rw = Reweighter.from_pretrained(result.plugin_dir, bb.fingerprint)
    per_input: dict[str, set[int]] = {}
    for ex, enc in zip(EXAMPLES, encode_all(bb.tokenizer, TEMPLATE, EXAMPLES, 256)):
        per_input.setdefault(ex.input, set()).update(enc.input_ids[enc.prompt_len:])
    twice = {t for ids in per_input.values() for t in ids if sum(t in other for other in per_input.values()) >= 2}
    assert set(rw.unseen.seen.nonzero().flatten().tolist()) == twice and 0 < len(twice)
    assert result.best_loss < result.blackbox_loss and float(rw.unseen.level.weight.detach().abs().sum()) > 0


@pytest.mark.parametrize("support_eos", [False, True])
def test_training_over_the_supports_head_rows_matches_training_over_the_whole_vocabulary(tmp_path, support_eos):
    import logitplug.combine as combine

    bb = tiny_blackbox()
    calls = []
    real = combine.Support.nll_and_hits
    settings = dict(epochs=2, support_k=8, support_eos=support_eos, cache_top_k=64,
                    alpha_grid=(0.5, 1.0), strength_candidates=())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(combine.Support, "nll_and_hits", lambda self, *a: calls.append(1) or real(self, *a))
        sparse = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "s", **settings), SMALL)
    assert calls  # the support path ran
    dense = train(bb, EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path / "d", sparse_support=False, **settings), SMALL)
    for a, b in zip(sparse.history, dense.history):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4)
        assert a["blackbox_eval_loss"] == pytest.approx(b["blackbox_eval_loss"], rel=1e-5)
        assert a["eval_accuracy_by_alpha"] == b["eval_accuracy_by_alpha"]
    w_s, w_d = load_file(str(sparse.plugin_dir / "model.safetensors")), load_file(str(dense.plugin_dir / "model.safetensors"))
    assert all(torch.allclose(w_s[k], w_d[k], atol=1e-4) for k in w_d)


def test_token_vector_conflict_names_settings_that_leave_nothing_to_compare():
    from logitplug.train import token_vector_conflict

    assert token_vector_conflict(ReweighterConfig(), "BLEU+ROUGE-L") is None
    assert "token_vectors_from" in token_vector_conflict({"token_vectors_from": "smollm2-135m"}, "BLEU")
    assert "init_from" in token_vector_conflict(ReweighterConfig(init_from="/x"), "BLEU")
    assert "strength_by" in token_vector_conflict({}, "loss")


def test_blackbox_weight_candidates_are_checked_before_any_training(tmp_path):
    from logitplug.train import Candidate, blackbox_weight_candidate, blackbox_weight_conflict, train_and_choose

    by_text = _config(tmp_path, strength_by="BLEU", strength_candidates=(0.0, 1.0), support_k=4)
    assert blackbox_weight_conflict(0.5, by_text.rule, by_text.strength_by) is None
    assert "(0, 1)" in blackbox_weight_conflict(1.0, "product", "BLEU") and "(0, 1)" in blackbox_weight_conflict(0.0, "product", "BLEU")
    assert "product" in blackbox_weight_conflict(0.5, "mixture", "loss")
    assert "strength_by" in blackbox_weight_conflict(0.5, "product", "loss")
    tried = blackbox_weight_candidate(SMALL, 0.25)
    assert tried.reweighter is SMALL and dict(tried.train) == {"support_k": 0, "blackbox_weight": 0.25}
    scorer = lambda reweighter, rule=None: {"BLEU": 1.0}  # noqa: E731 -- never called: the checks come first
    for candidate, says in ((Candidate(SMALL, {"warmup": 1}), "warmup"),
                            (Candidate(SMALL, {"output_dir": "x"}), "output_dir")):
        with pytest.raises(ValueError, match=says):
            train_and_choose(tiny_blackbox(), EXAMPLES, EXAMPLES, TEMPLATE, by_text, {"default": SMALL, "other": candidate},
                             strength_selector=scorer)
    by_text_graded = replace(by_text, alpha_grid=(0.5, 1.0))  # a strength grid by loss: no epoch choice by text
    with pytest.raises(ValueError, match="candidate 'other'.*alpha_grid"):
        train_and_choose(tiny_blackbox(), EXAMPLES, EXAMPLES, TEMPLATE, by_text_graded,
                         {"default": SMALL, "other": Candidate(SMALL, {"select_by": "BLEU"})}, strength_selector=scorer)
    assert not (tmp_path / "plugin").exists()
    by_bleu = blackbox_weight_candidate(SMALL, 0.5, train={"select_by": "BLEU", "patience": 3})
    assert dict(by_bleu.train) == {"support_k": 0, "blackbox_weight": 0.5, "select_by": "BLEU", "patience": 3,
                                   "alpha_grid": ()}  # the grid by loss goes: it cannot join a text selection


def test_a_candidate_chooses_its_epoch_by_held_out_text_through_its_own_rule(tmp_path):
    from logitplug.decode import GenerationConfig
    from logitplug.selection import held_out_scorers
    from logitplug.train import blackbox_weight_candidate, train_and_choose

    bb, gen = tiny_blackbox(), GenerationConfig(max_new_tokens=3)
    cfg = _config(tmp_path, epochs=2, strength_by="BLEU", strength_candidates=(0.0, 1.0), select_inputs=2, support_k=4)
    scorers = held_out_scorers(cfg, bb, TEMPLATE, EXAMPLES, gen)
    candidate = blackbox_weight_candidate(SMALL, 0.5, train={"select_by": "BLEU"})
    _, choice = train_and_choose(bb, EXAMPLES, EXAMPLES, TEMPLATE, cfg, {"default": SMALL, "w": candidate},
                                 generation=gen, **scorers)
    default, weighted = (read_sidecar(tmp_path / "plugin" / "candidates" / n) for n in ("default", "w"))
    assert default["selection"]["by"] == "loss" and weighted["selection"]["by"] == "BLEU"
    history = json.loads((tmp_path / "plugin" / "candidates" / "w" / "history.json").read_text())
    assert all("validation_BLEU" in record for record in history)  # every epoch decoded through its own rule
    assert weighted["train_config"]["blackbox_weight"] == 0.5 and set(choice["held_out_mix"]) == {"default", "w"}


@pytest.mark.parametrize("dense_limit, kept_in_loop", [(10**9, True), (0, False)], ids=["small-vocab", "large-vocab"])
def test_freed_memory_is_kept_only_in_the_loop_and_only_for_small_dense_steps(tmp_path, monkeypatch, dense_limit, kept_in_loop):
    import importlib

    train_module = importlib.import_module("logitplug.train")  # the package re-exports train() under the same name
    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory_in_process", lambda keep=True: calls.append(keep))
    monkeypatch.setattr(train_module, "DENSE_VOCAB_KEPT", dense_limit)
    train(tiny_blackbox(), EXAMPLES, EXAMPLES[:4], TEMPLATE, _config(tmp_path, epochs=1), SMALL)
    assert calls == [False, kept_in_loop, False]  # recording, training loop, after it


def test_a_candidate_with_its_own_prompt_trains_and_is_judged_behind_it(tmp_path, monkeypatch):
    """The default recipe's whole-vocabulary candidate drops the run's demonstrations: it trains on
    every row behind the plain prompt, and its held-out text is decoded behind that prompt too."""
    import importlib

    from logitplug.decode import GenerationConfig
    from logitplug.train import Candidate, train_and_choose

    train_module = importlib.import_module("logitplug.train")  # the package re-exports train() under the same name
    cfg = _config(tmp_path, epochs=1, strength_by="BLEU", strength_candidates=(0.0, 1.0), select_inputs=2)
    prompted = TEMPLATE.with_demonstrations(EXAMPLES[:1])
    built_for, trained_on = [], {}
    real_scorers, real_train = train_module.held_out_scorers, train_module.train

    def scorers(config, blackbox, template, *a, **k):
        built_for.append(template)
        return real_scorers(config, blackbox, template, *a, **k)

    def recording_train(bb, rows, held_out, template, tcfg, *a, **k):
        trained_on[Path(tcfg.output_dir).name] = (template, len(rows))
        return real_train(bb, rows, held_out, template, tcfg, *a, **k)

    monkeypatch.setattr(train_module, "held_out_scorers", scorers)
    monkeypatch.setattr(train_module, "train", recording_train)
    bb = tiny_blackbox()
    run_scorers = real_scorers(cfg, bb, prompted, EXAMPLES, GenerationConfig(max_new_tokens=3))
    plain = Candidate(SMALL, {"support_k": 0, "blackbox_weight": 0.5}, TEMPLATE, EXAMPLES)
    _, choice = train_and_choose(bb, EXAMPLES[1:], EXAMPLES, prompted, cfg, {"default": SMALL, "plain": plain},
                                 generation=GenerationConfig(max_new_tokens=3), **run_scorers)
    assert trained_on == {"default": (prompted, len(EXAMPLES) - 1), "plain": (TEMPLATE, len(EXAMPLES))}
    assert built_for == [TEMPLATE]  # the run's scorers serve the default; the plain candidate gets its own
    assert set(choice["held_out_mix"]) == {"default", "plain"}
    with pytest.raises(ValueError, match="no training rows"):
        train_and_choose(bb, EXAMPLES, EXAMPLES, prompted, replace(cfg, output_dir=str(tmp_path / "x")),
                         {"default": SMALL, "empty": Candidate(SMALL, {}, TEMPLATE, [])}, **run_scorers)


def test_support_coverage_reads_the_recorded_top_k_and_agrees_with_the_black_box(tmp_path):
    from logitplug.train import support_coverage

    bb = tiny_blackbox()
    cached = _config(tmp_path, support_k=4)
    on_the_fly = replace(cached, cache=False)
    for k in (1, 4, 20):
        from_cache = support_coverage(bb, TEMPLATE, EXAMPLES, cached, k=k)
        assert from_cache == pytest.approx(support_coverage(bb, TEMPLATE, EXAMPLES, on_the_fly, k=k))
    assert support_coverage(bb, TEMPLATE, EXAMPLES, cached) == support_coverage(bb, TEMPLATE, EXAMPLES, cached, k=4)
    shares = [support_coverage(bb, TEMPLATE, EXAMPLES, on_the_fly, k=k) for k in (1, 4, 20, bb.vocab_size)]
    assert shares == sorted(shares) and shares[-1] == 1.0 and 0 <= shares[0] < 1  # random weights: far from every target


def test_a_candidate_tried_only_below_a_coverage_is_left_out_where_the_support_holds_more(tmp_path):
    from logitplug.decode import GenerationConfig
    from logitplug.selection import held_out_scorers
    from logitplug.train import blackbox_weight_candidate, support_coverage, train_and_choose

    bb = tiny_blackbox()
    cfg = _config(tmp_path, epochs=1, strength_by="BLEU", strength_candidates=(0.0, 1.0), select_inputs=2, support_k=4)
    scorers = held_out_scorers(cfg, bb, TEMPLATE, EXAMPLES, GenerationConfig(max_new_tokens=3))
    coverage = support_coverage(bb, TEMPLATE, EXAMPLES, cfg)
    assert 0 < coverage < 1
    for below, tried in ((coverage, False), (min(1.0, coverage + 0.01), True)):
        run = replace(cfg, output_dir=str(tmp_path / f"run-{tried}"))
        candidate = blackbox_weight_candidate(SMALL, 0.5, below_coverage=below)
        _, choice = train_and_choose(bb, EXAMPLES, EXAMPLES, TEMPLATE, run, {"default": SMALL, "w": candidate},
                                     generation=GenerationConfig(max_new_tokens=3), **scorers)
        assert choice["support_coverage"] == pytest.approx(coverage, abs=1e-4)
        assert ("w" in choice["held_out_mix"]) == tried and ("not_tried" in choice) == (not tried)
        assert (tmp_path / f"run-{tried}" / "candidates" / "w").exists() == tried
        if not tried:
            assert "top-4" in choice["not_tried"]["w"]


def test_tied_candidates_are_averaged_into_one_plugin_folder_that_load_plugin_decodes(tmp_path):
    """With ``average_ties``, candidates whose held-out mixes lie within the margin (1.0 here: every pair
    ties) and share the run's prompt and rule are decoded together; a candidate behind another prompt is
    left out, and without the option the folder holds the kept candidate alone."""
    from logitplug.decode import GenerationConfig
    from logitplug.reweighter import LogitSum
    from logitplug.selection import held_out_scorers
    from logitplug.train import ENSEMBLE_NAME, Candidate, load_plugin, train_and_choose

    bb = tiny_blackbox()
    cfg = _config(tmp_path, epochs=1, support_k=8, strength_by="BLEU", strength_candidates=(0.5, 1.0), select_inputs=2)
    scorers = held_out_scorers(cfg, bb, TEMPLATE, EXAMPLES, GenerationConfig(max_new_tokens=3))
    wider = replace(SMALL, hidden_size=32, intermediate_size=64)
    other_prompt = Candidate(SMALL, {}, TEMPLATE.with_demonstrations(EXAMPLES[:1]), EXAMPLES[1:])
    candidates = {"default": SMALL, "wider": wider, "prompted": other_prompt}
    _, choice = train_and_choose(bb, EXAMPLES, EXAMPLES, TEMPLATE, cfg, candidates, margin=1.0,
                                 generation=GenerationConfig(max_new_tokens=3), average_ties=True, **scorers)
    assert choice["chosen"] == "default" and choice["averaged"]["members"] == ["default", "wider"]
    alphas = [json.loads((tmp_path / "plugin" / "candidates" / n / "logitplug.json").read_text())["train_config"]["alpha"]
              for n in ("default", "wider")]
    assert choice["averaged"]["weights"] == [a / 2 for a in alphas]
    loaded = load_plugin(tmp_path / "plugin", bb)
    assert isinstance(loaded.reweighter, LogitSum) and loaded.reweighter.weights == [a / 2 for a in alphas]
    assert loaded.rule.alpha == 1.0 and loaded.rule.k == 8  # the strengths live in the weights
    ids = torch.tensor([[1, 2, 3]])
    members = [Reweighter.from_pretrained(tmp_path / "plugin" / "candidates" / n) for n in ("default", "wider")]
    by_hand = LogitSum(members, [a / 2 for a in alphas])(ids, torch.ones_like(ids))
    assert torch.allclose(loaded.reweighter(ids, torch.ones_like(ids)), by_hand)
    out = Decoder(bb, loaded.reweighter, loaded.rule, GenerationConfig(max_new_tokens=4)).generate_ids([ids[0].tolist()])
    assert len(out[0].token_ids) > 0
    # a folder without its candidates says what is missing
    import shutil
    shutil.rmtree(tmp_path / "plugin" / "candidates" / "wider")
    with pytest.raises(FileNotFoundError, match=ENSEMBLE_NAME):
        load_plugin(tmp_path / "plugin", bb)
    # without the option: the kept candidate alone
    _, alone = train_and_choose(bb, EXAMPLES, EXAMPLES, TEMPLATE, replace(cfg, output_dir=str(tmp_path / "one")),
                                {"default": SMALL, "wider": wider}, margin=1.0,
                                generation=GenerationConfig(max_new_tokens=3), **scorers)
    assert "averaged" not in alone and not (tmp_path / "one" / ENSEMBLE_NAME).exists()
    assert isinstance(load_plugin(tmp_path / "one", bb).reweighter, Reweighter)
