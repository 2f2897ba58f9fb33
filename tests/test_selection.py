import json

"""Choosing how many demonstrations a prompt holds, by the black box's own held-out outputs."""

import pytest

from logitplug import selection
from logitplug.combine import BlackBoxOnly
from logitplug.data import Example, PromptTemplate, draw_demonstrations
from logitplug.decode import GenerationConfig
from logitplug.selection import fix_demonstrations, text_metric_selector
from tiny import tiny_blackbox

TEMPLATE = PromptTemplate("t", "Attributes: {input}\nSentence:")
ROWS = [Example(f"name[P{i}]", f"P{i} is a pub.") for i in range(12)]


def test_the_count_with_the_best_held_out_score_is_fixed_in_the_template(monkeypatch):
    bb = tiny_blackbox()
    made = {}

    def fake_selector(blackbox, template, held_out, metric, rule, generation=None, max_inputs=100):
        assert isinstance(rule, BlackBoxOnly) and metric == "BLEU"  # the black box alone is scored
        made[len(template.demos)] = template
        return lambda rw: {0: 10.0, 1: 30.0, 3: 20.0}[len(template.demos)]

    monkeypatch.setattr(selection, "text_metric_selector", fake_selector)
    template, rest, info = fix_demonstrations(bb, TEMPLATE, ROWS, ROWS[:2], [3, 0, 1], seed=4)
    assert info["demonstrations"] == 1 and info["demonstration_scores"] == {"0": 10.0, "1": 30.0, "3": 20.0}
    demos, want_rest = draw_demonstrations(ROWS, 1, 4)  # the same draw as icl-1 with this seed
    assert template.demos == ((demos[0].input, demos[0].target),) and rest == want_rest
    assert len(rest) == len(ROWS) - 1 and demos[0] not in rest
    # ties go to fewer demonstrations; one count is taken as given, nothing decoded
    monkeypatch.setattr(selection, "text_metric_selector", lambda *a, **k: (lambda rw: 5.0))
    assert fix_demonstrations(bb, TEMPLATE, ROWS, ROWS[:2], (1, 3), seed=4)[2]["demonstrations"] == 1
    monkeypatch.setattr(selection, "text_metric_selector", None)
    template, rest, info = fix_demonstrations(bb, TEMPLATE, ROWS, ROWS[:2], 2, seed=4)
    assert len(template.demos) == 2 and info == {"demonstrations": 2}
    assert fix_demonstrations(bb, TEMPLATE, ROWS, ROWS[:2], 0, seed=4)[:2] == (TEMPLATE, ROWS)
    with pytest.raises(ValueError, match=">= 0"):
        fix_demonstrations(bb, TEMPLATE, ROWS, ROWS[:2], (-1, 2), seed=4)


def test_the_scores_are_the_black_boxs_real_held_out_metric():
    bb = tiny_blackbox()
    gen = GenerationConfig(max_new_tokens=8)
    _, _, info = fix_demonstrations(bb, TEMPLATE, ROWS, ROWS[:3], (0, 2), seed=1, generation=gen, metric="ROUGE-L",
                                    max_inputs=3)
    demos, _ = draw_demonstrations(ROWS, 2, 1)
    direct = text_metric_selector(bb, TEMPLATE.with_demonstrations(demos), ROWS[:3], "ROUGE-L", BlackBoxOnly(), gen, 3)
    assert info["demonstration_scores"]["2"] == pytest.approx(round(direct(None), 4))
    assert set(info["demonstration_scores"]) == {"0", "2"}


def test_one_decode_scores_every_metric_of_a_mix_as_single_metric_scorers_do():
    from logitplug.selection import text_metrics_scorer

    bb = tiny_blackbox()
    gen = GenerationConfig(max_new_tokens=8)
    both = text_metrics_scorer(bb, TEMPLATE, ROWS[:3], ["BLEU", "ROUGE-L"], BlackBoxOnly(), gen, 3)(None)
    assert set(both) == {"BLEU", "ROUGE-L"}
    for metric in both:
        alone = text_metric_selector(bb, TEMPLATE, ROWS[:3], metric, BlackBoxOnly(), gen, 3)(None)
        assert both[metric] == pytest.approx(alone)


def test_held_out_scorers_decode_renamed_inputs_when_the_config_asks(monkeypatch):
    """select_renamed: the strength choice decodes held-out inputs whose names are pseudo-names, and
    scores them against references renamed alike."""
    from logitplug.selection import held_out_scorers
    from logitplug.train import TrainConfig

    bb = tiny_blackbox()
    seen = {}

    def fake_evaluate(outputs, refs, metrics):
        seen["refs"] = refs
        return {m: type("S", (), {"score": 1.0})() for m in metrics}

    monkeypatch.setattr(selection, "evaluate", fake_evaluate)
    held_out = [Example(f"name[Venue{i}]", f"Venue{i} is a pub.") for i in range(20)]
    gen = GenerationConfig(max_new_tokens=2)
    for renamed in (0.0, 1.0):
        cfg = TrainConfig(output_dir="-", strength_by="BLEU", strength_candidates=(0.0, 1.0), select_renamed=renamed)
        held_out_scorers(cfg, bb, TEMPLATE, held_out, gen)["strength_selector"](None, BlackBoxOnly())
        kept = sum(f"Venue{i} " in r[0] for i, r in enumerate(seen["refs"]))
        assert kept == (20 if renamed == 0 else 0)
    with pytest.raises(ValueError, match="select_renamed"):
        TrainConfig(output_dir="-", select_renamed=2)
    with pytest.raises(ValueError, match="select_renamed_syllables must be one of 'training', 'held-out'"):
        TrainConfig(output_dir="-", select_renamed=0.5, select_renamed_syllables="test")


def _plugin_with_held_out_scores(folder, scores: dict, alpha: float):
    from logitplug.reweighter.model import SIDECAR_NAME

    folder.mkdir(parents=True)
    sidecar = {"train_config": {"alpha": alpha},
               "strength_selection": {"by": "BLEU+METEOR", "best": alpha, "scores": scores}}
    (folder / SIDECAR_NAME).write_text(json.dumps(sidecar))
    return folder


def test_choose_plugin_keeps_the_default_unless_another_clearly_writes_better(tmp_path):
    from logitplug.selection import choose_plugin

    default = _plugin_with_held_out_scores(tmp_path / "a", {"0": {"BLEU": 10, "METEOR": 20}, "1": {"BLEU": 12, "METEOR": 22}}, 1.0)
    close = _plugin_with_held_out_scores(tmp_path / "b", {"0.5": {"BLEU": 12.1, "METEOR": 22}}, 0.5)
    better = _plugin_with_held_out_scores(tmp_path / "c", {"1": {"BLEU": 15, "METEOR": 22}}, 1.0)
    assert choose_plugin([default, close])[0] == 0  # a lead within the margin is noise
    index, mixes = choose_plugin([default, close, better])
    assert index == 2 and mixes[2] == 1.0 and mixes[0] == pytest.approx((12 / 15 + 22 / 22) / 2)
    # the scores read are those at the strength the plugin decodes with, not the best-scoring one
    decoded_at_zero = _plugin_with_held_out_scores(tmp_path / "d", {"0": {"BLEU": 1, "METEOR": 2}, "1": {"BLEU": 99, "METEOR": 99}}, 0.0)
    assert choose_plugin([default, decoded_at_zero])[0] == 0
    unchosen = tmp_path / "e"
    unchosen.mkdir()
    (unchosen / "logitplug.json").write_text(json.dumps({"train_config": {"alpha": 1.0}}))
    with pytest.raises(ValueError, match="no strength choice by held-out text"):
        choose_plugin([default, unchosen])
    # strengths chosen on different held-out inputs: the scores do not compare
    from logitplug.selection import STRENGTH_OUTPUTS_NAME

    for folder, inputs in ((default, ["a", "b"]), (better, ["a", "c"])):
        (folder / STRENGTH_OUTPUTS_NAME).write_text(json.dumps({"inputs": inputs, "references": [["x"], ["y"]]}))
    with pytest.raises(ValueError, match="other held-out inputs"):
        choose_plugin([default, better])
    (better / STRENGTH_OUTPUTS_NAME).write_text(json.dumps({"inputs": ["a", "b"], "references": [["x"], ["y"]]}))
    assert choose_plugin([default, better])[0] == 1
