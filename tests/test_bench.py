"""The bench runner on a tiny random-weight black box and a few real CommonGen rows."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from logitplug.bench import BenchConfigError, load_config, make_method, parse_config, run_bench
from logitplug.bench.methods import CellContext, test_prompts as build_test_prompts
from logitplug.bench.runner import distinct_sizes, settings_key
from logitplug.combine import ProductRule
from logitplug.data import Example, PromptTemplate
from logitplug.decode import GenerationConfig
from logitplug.reweighter import LogitDifference, Reweighter, ReweighterConfig
from tiny import tiny_blackbox

ALL_METHODS = ["zero-shot", "icl-1", "small", "mixture-0.5", "plugin", "proxy-tuning", "lora",
               {"name": "plugin-wd1", "method": "plugin", "train": {"weight_decay": 1.0}}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tinybb") / "tiny-bb"
    bb = tiny_blackbox()
    bb.model.save_pretrained(path)
    bb.tokenizer.save_pretrained(path)
    return path


def _raw(tiny_dir, out, **kw):
    return {
        "name": "tiny", "output_dir": str(out), "tasks": ["commongen"], "blackboxes": [str(tiny_dir)],
        "methods": ALL_METHODS, "seeds": [0, 1],
        "data": {"train_rows": 12, "validation_rows": 6, "test_inputs": 3},
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "progress": False, "checkpoint_every": 0},
        "reweighter": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "max_positions": 256},
        "lora": {"epochs": 1, "batch_size": 4, "rank": 2},
        "metrics": ["BLEU", "ROUGE-L"], **kw,
    }


@pytest.mark.parametrize("change, message", [
    ({"methods": ["zero-shot", "telepathy"]}, "unknown method 'telepathy'"),
    ({"tasks": ["e2e", "poetry"]}, r"unknown task\(s\) \['poetry'\]"),
    ({"blackboxes": ["gpt-17"]}, "unknown black box 'gpt-17'"),
    ({"train": {"learning_rate": 1}}, r"unknown train setting\(s\) \['learning_rate'\]"),
    ({"methods": [{"name": "x", "method": "plugin", "reweighter": {"layers": 2}}]}, r"unknown reweighter setting"),
    ({"methods": ["plugin", "plugin"]}, "must be unique"),
    ({"generation": {"strategy": "magic"}}, "strategy must be"),
    ({"seeds": ["a"]}, "seeds"),
    ({"metrics": ["BLEURT"]}, "unknown metric"),
    ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
    ({"task_generation": {"e2e": {"max_new_tokens": 9}}}, "not in 'tasks'"),
    ({"task_generation": {"commongen": {"max_new_tokens": 0}}}, "task_generation.commongen"),
    ({"lora": {"rank": 0}}, "lora: LoraTrainConfig.rank must be >= 1"),
    ({"data": {"validation_rows": 6, "validation_inputs": 3}}, "not both"),
    ({"methods": [{"name": "x", "method": "small", "alternatives": [{"gate": True}]}]}, "applies to plugin methods"),
    ({"methods": [{"name": "x", "method": "plugin", "alternatives": [{"gates": True}]}]}, r"unknown alternatives setting"),
    ({"methods": [{"name": "x", "method": "plugin", "alternatives": [{"train": {"support": 0}}]}]}, r"unknown alternatives' train setting"),
    ({"methods": [{"name": "x", "method": "plugin", "alternatives": [{"train": 0}]}]}, r"an alternative's 'train' is a mapping"),
])
def test_bad_config_is_refused_before_any_work(tiny_dir, tmp_path, change, message):
    with pytest.raises(BenchConfigError, match=message):
        parse_config(_raw(tiny_dir, tmp_path / "out", **change))
    assert not (tmp_path / "out").exists()


def test_grid_runs_every_method_writes_table_and_plot_and_resumes(tiny_dir, tmp_path, capsys):
    cfg = parse_config(_raw(tiny_dir, tmp_path / "out"))
    table = run_bench(cfg, progress=False)
    cells = sorted((tmp_path / "out" / "cells").rglob("*.json"))
    assert len(cells) == 1 + 7 * 2  # zero-shot is unseeded; every other method runs per seed
    text = table.read_text()
    for m in ["zero-shot", "icl-1", "small", "mixture-0.5", "plugin", "proxy-tuning", "lora", "plugin-wd1"]:
        assert f"| {m} |" in text
    assert (tmp_path / "out" / "plot-commongen-tiny-bb.png").stat().st_size > 1000
    rec = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin" / "seed1.json").read_text())
    assert rec["test_inputs"] == 3 and len(rec["generations"]) == 3 and {"BLEU", "ROUGE-L", "empty"} <= set(rec["scores"])
    # the small model is trained once and shared with proxy-tuning as its expert
    small = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "small" / "seed0.json").read_text())
    proxy = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "proxy-tuning" / "seed0.json").read_text())
    assert proxy["info"]["expert"]["artifact"] == small["info"]["artifact"]
    # where its wall-clock went, as the other trained methods record it (standing.py marks a cell whose models were reused)
    lora = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "lora" / "seed0.json").read_text())
    for cell in (proxy, lora):
        assert set(cell["info"]["seconds"]) == {"train", "decode"} and min(cell["info"]["seconds"].values()) >= 0
    plugin0 = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin" / "seed0.json").read_text())
    wd1 = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin-wd1" / "seed0.json").read_text())
    assert plugin0["info"]["artifact"] != wd1["info"]["artifact"]

    # rerun: nothing to do; remove one cell: only that one runs, reusing its trained model
    models = sorted(p.name for p in (tmp_path / "out" / "models" / "commongen" / "tiny-bb").iterdir())
    capsys.readouterr()
    run_bench(cfg, progress=False)
    assert "0 to run" in capsys.readouterr().out
    (tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin" / "seed1.json").unlink()
    run_bench(cfg, progress=False)
    assert "1 to run" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "models" / "commongen" / "tiny-bb").iterdir()) == models
    again = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin" / "seed1.json").read_text())
    assert again["generations"] == rec["generations"]
    # changed settings make the affected cells stale: they run again instead of being reused
    changed = parse_config(_raw(tiny_dir, tmp_path / "out", methods=["zero-shot", "plugin"],
                                generation={"max_new_tokens": 4, "batch_size": 4}))
    run_bench(changed, progress=False)
    assert "3 to run" in capsys.readouterr().out


def test_a_cell_finished_meanwhile_by_another_run_is_not_redone(tiny_dir, tmp_path, capsys):
    from logitplug.bench.runner import cell_path

    cfg = parse_config(_raw(tiny_dir, tmp_path / "out", methods=["icl-1"], seeds=[0, 1, 2]))
    icl = cfg.methods[0]
    path = {seed: cell_path(cfg, "commongen", str(tiny_dir), "icl-1", seed, None) for seed in (0, 1, 2)}
    real_run, runs = icl.run, []

    def run_and_race(ctx):  # while seed 1 runs, a second process finishes seed 2
        runs.append(ctx.seed)
        if ctx.seed == 1:
            record = json.loads(path[0].read_text())
            path[2].write_text(json.dumps({**record, "seed": 2, "wall_seconds": 123.0}))
        return real_run(ctx)

    object.__setattr__(icl, "run", run_and_race)
    run_bench(cfg, progress=False)
    assert runs == [0, 1] and "seed 2: finished meanwhile by another run; skipped" in capsys.readouterr().out
    assert json.loads(path[2].read_text())["wall_seconds"] == 123.0  # the other run's record is kept


def test_grid_search_picks_the_lowest_validation_loss(tiny_dir, tmp_path):
    raw = _raw(tiny_dir, tmp_path / "out", methods=["plugin"], seeds=[0], grid={"lr": [1e-6, 3e-3]})
    run_bench(parse_config(raw), progress=False)
    rec = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin" / "seed0.json").read_text())
    assert rec["info"]["grid_points"] == 2 and rec["info"]["selected"] == {"lr": 3e-3}


def test_icl_drops_demonstrations_that_do_not_fit_the_context():
    bb = tiny_blackbox()  # 256-token context
    template = PromptTemplate("t", "Concepts: {input}\nSentence:")
    long = Example("x " * 150, "y " * 150)
    short = Example("dog, ball", "The dog plays with a ball.")
    ctx = CellContext(blackbox=bb, task="t", train=[], validation=[], test=[Example("cat, mat")], template=template,
                      seed=0, generation=GenerationConfig(max_new_tokens=16), models_dir=None)
    kept = build_test_prompts(ctx, [long, short])[0]
    assert len(kept) <= 256 - 16
    assert kept == bb.tokenizer(template.render_with_demos("cat, mat", [short]))["input_ids"]


def test_method_names_parse():
    assert make_method("icl-3").shots == 3
    variant = make_method({"name": "p", "method": "plugin", "generation": {"repetition_scope": "all"}})
    assert variant.generation_overrides == {"repetition_scope": "all"}
    assert make_method({"name": "zs-chat", "method": "zero-shot", "chat": True}).chat
    with pytest.raises(ValueError, match="unknown generation setting"):
        make_method({"name": "p", "method": "plugin", "generation": {"beams": 2}})
    assert make_method("mixture-0.25").mixture_weight == 0.25
    assert make_method("proxy-tuning-0.5").alpha == 0.5
    with pytest.raises(ValueError, match="unknown method"):
        make_method("icl")


def test_logit_difference_with_product_rule_is_proxy_tuning():
    torch.manual_seed(0)
    cfg = dict(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    expert = Reweighter.build(ReweighterConfig(**cfg), 50, seed=1)
    anti = Reweighter.build(ReweighterConfig(**cfg), 50, seed=2)
    diff = LogitDifference(expert, anti)
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones_like(ids)
    bb = torch.log_softmax(torch.randn(2, 7, 50), -1)
    e, a = expert(ids, mask), anti(ids, mask)
    want = torch.log_softmax(bb + 0.7 * (torch.log_softmax(e, -1) - torch.log_softmax(a, -1)), -1)
    got = ProductRule(0.7)(bb, diff(ids, mask))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # incremental decoding gives the same signal as the teacher-forced pass
    first, state = diff.start(ids[:, :5], mask[:, :5])
    torch.testing.assert_close(first, diff(ids[:, :5], mask[:, :5])[:, -1], atol=1e-5, rtol=1e-5)
    nxt = diff.step(state, ids[:, 5])
    torch.testing.assert_close(nxt, diff(ids[:, :6], mask[:, :6])[:, -1], atol=1e-5, rtol=1e-5)


def test_topk_black_boxes_are_named_and_train_over_their_support(tiny_dir, tmp_path):
    # the recipe's own reweighter only: its whole-vocabulary candidate would not train over the support
    plugin = {"name": "plugin", "method": "plugin", "alternatives": []}
    raw = _raw(tiny_dir, tmp_path / "out", methods=[plugin], seeds=[0], blackboxes=[f"{tiny_dir}@top5"])
    run_bench(parse_config(raw), progress=False)
    rec = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb@top5" / "plugin" / "seed0.json").read_text())
    assert rec["info"]["rule"].startswith("rule:product-topk|k:5|alpha:")  # strength: chosen on validation
    assert rec["blackbox_fingerprint"].startswith("tiny-bb@top5|")
    with pytest.raises(BenchConfigError, match="unknown black box"):
        parse_config(_raw(tiny_dir, tmp_path / "x", blackboxes=["nothing@top5"]))


def test_a_training_size_sweep_gives_cells_per_size_a_table_column_and_curves(tiny_dir, tmp_path):
    raw = _raw(tiny_dir, tmp_path / "out", methods=["zero-shot", "small", "icl-1"], seeds=[0],
               data={"train_rows": [4, 8], "validation_rows": 4, "test_inputs": 2})
    table = run_bench(parse_config(raw), progress=False)
    cells = sorted(str(p.relative_to(tmp_path / "out" / "cells" / "commongen" / "tiny-bb")) for p in (tmp_path / "out" / "cells").rglob("*.json"))
    # icl-1 draws its demonstration from the rows every size shares: one cell, like zero-shot
    assert cells == ["icl-1/seed0.json", "small/seed0-n4.json", "small/seed0-n8.json", "zero-shot/unseeded.json"]
    text = table.read_text()
    assert "| train rows |" in text and "| small | 4 | 1 |" in text and "| small | 8 | 1 |" in text
    assert (tmp_path / "out" / "curve-commongen-tiny-bb.png").exists()
    n4 = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "small" / "seed0-n4.json").read_text())
    assert n4["train_rows"] == 4 and n4["sweep_size"] == 4
    with pytest.raises(BenchConfigError, match="train_rows"):
        parse_config(_raw(tiny_dir, tmp_path / "x", data={"train_rows": [0, 5]}))


def _curve_rows(stale_sizes: set[int], stale_flat: bool = False) -> list[dict]:
    rows = [{"method": "plugin", "train_rows": n, "sweep_size": n, "stale": int(n in stale_sizes),
             "scores": {"BLEU": {"mean": float(n) / 10, "std": 0.0}}} for n in (100, 300)]
    return rows + [{"method": "zero-shot", "train_rows": 0, "sweep_size": None, "stale": int(stale_flat),
                    "scores": {"BLEU": {"mean": 5.0, "std": 0.0}}}]


@pytest.mark.parametrize("stale_sizes, stale_flat, hollow", [({300}, False, [300]), (set(), True, []), (set(), False, [])])
def test_curves_draw_stale_points_hollow_and_say_so_only_where_drawn(tmp_path, monkeypatch, stale_sizes, stale_flat, hollow):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from logitplug.bench import report

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read back what was drawn
    path = report._curves(SimpleNamespace(output_dir=tmp_path), "e2e", "bb", _curve_rows(stale_sizes, stale_flat), ["BLEU"], plt)
    assert path.exists()
    [fig] = figures
    drawn_hollow = [int(x) for line in fig.axes[0].lines if line.get_markerfacecolor() == "white" for x in line.get_xdata()]
    assert drawn_hollow == hollow
    assert ("hollow" in fig.get_suptitle()) == bool(hollow)  # a stale flat line is never drawn hollow


def test_sweep_sizes_beyond_the_split_run_once():
    assert distinct_sizes([100, 300, 1000, 3000], 723) == [100, 300, 1000]
    assert distinct_sizes([100, 300, 1000, 3000], 2517) == [100, 300, 1000, 3000]
    assert distinct_sizes([100, 723, None], 723) == [100, 723]
    assert distinct_sizes([None, 50], 723) == [None, 50]


def test_a_sweep_can_run_some_sizes_now_under_the_whole_configs_settings(tiny_dir, tmp_path):
    raw = _raw(tiny_dir, tmp_path / "out", methods=["small"], seeds=[0],
               data={"train_rows": [4, 8], "validation_rows": 4, "test_inputs": 2})
    part = parse_config(raw)
    part.run_sizes = [8]
    run_bench(part, progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "cells").rglob("*.json")) == ["seed0-n8.json"]
    whole = parse_config(raw)  # the n8 cell counts as done for the whole sweep
    assert settings_key(whole, whole.methods[0], "commongen") == settings_key(part, part.methods[0], "commongen")


def test_a_sweep_draws_demonstrations_from_its_smallest_size_so_every_size_has_one_prompt(tiny_dir, tmp_path, monkeypatch):
    from logitplug.bench.methods import with_demonstrations
    from logitplug.bench.runner import demo_pool, prepare_task
    from logitplug.data import get_template

    cfg = parse_config(_raw(tiny_dir, tmp_path / "out", data={"train_rows": [4, 40], "validation_rows": 4, "test_inputs": 2}))
    cache = {}
    pool = demo_pool(cfg, "commongen", cache)
    small, large = prepare_task(cfg, "commongen", 4).train, prepare_task(cfg, "commongen", 40).train
    assert pool == small and all(ex in large for ex in pool)
    demos = []
    for rows in (small, large):
        ctx = CellContext(blackbox=None, task="commongen", train=rows, validation=[], test=[], template=get_template("commongen"),
                          seed=3, generation=None, models_dir=tmp_path / "m", demo_pool=pool)
        with_pool, _ = with_demonstrations(ctx, 2)
        assert len(with_pool.train) == len(rows) - 2 and not set(with_pool.template.demos) & {(e.input, e.target) for e in with_pool.train}
        demos.append(with_pool.template.demos)
    assert demos[0] == demos[1]
    assert demo_pool(parse_config(_raw(tiny_dir, tmp_path / "x")), "commongen", {}) is None  # not a sweep
    # the count chosen on validation depends on the pool, not the size: chosen once, reused by every size
    import logitplug.bench.methods as methods
    from logitplug.data import draw_demonstrations

    asked = []

    def choose(bb, template, train, held_out, counts, seed, generation=None, pool=None):
        asked.append(counts)
        shots, rest = draw_demonstrations(train, 1, seed, pool)
        return template.with_demonstrations(shots), rest, {"demonstrations": 1}

    monkeypatch.setattr(methods, "fix_demonstrations", choose)
    for rows in (small, large):
        ctx = CellContext(blackbox=SimpleNamespace(fingerprint="bb"), task="commongen", train=rows, validation=[], test=[],
                          template=get_template("commongen"), seed=3, generation=GenerationConfig(), models_dir=tmp_path / "m",
                          demo_pool=pool)
        with_demonstrations(ctx, (1, 2))
    assert asked == [(1, 2), 1]


def test_a_plugin_on_top_of_fixed_demonstrations(tiny_dir, tmp_path, monkeypatch):
    raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], methods=[{"name": "plugin-icl1", "method": "plugin", "icl": 1}],
               data={"train_rows": 12, "validation_rows": 6, "test_inputs": 2})
    run_bench(parse_config(raw), progress=False)
    rec = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin-icl1" / "seed0.json").read_text())
    sidecar = json.loads((Path(rec["info"]["artifact"]) / "logitplug.json").read_text())
    assert sidecar["template"]["name"] == "commongen+1shot" and len(sidecar["template"]["demos"]) == 1
    with pytest.raises(ValueError, match="'icl' applies to trained"):
        make_method({"name": "z", "method": "zero-shot", "icl": 2})
    # candidate counts: validation chooses, the cell records the choice and the scores behind it
    assert make_method({"name": "c", "method": "plugin", "icl": [3, 1, 3]}).icl == (1, 3)
    assert make_method({"name": "c", "method": "plugin", "icl": [2]}).icl == 2
    with pytest.raises(ValueError, match=">= 0"):
        make_method({"name": "c", "method": "plugin", "icl": [-1, 2]})
    raw["methods"] = [{"name": "plugin-icl-chosen", "method": "plugin", "icl": [0, 1]}]
    run_bench(parse_config(raw), progress=False)
    rec = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin-icl-chosen" / "seed0.json").read_text())
    chosen = rec["info"]["demonstrations"]
    assert chosen in (0, 1) and set(rec["info"]["demonstration_scores"]) == {"0", "1"}
    sidecar = json.loads((Path(rec["info"]["artifact"]) / "logitplug.json").read_text())
    assert len(sidecar["template"]["demos"]) == chosen
    # a second variant on the same data and seed reuses the stored choice: no validation decoding
    import logitplug.selection

    def no_decoding(*a, **k):
        raise AssertionError("the demonstration count was chosen again")

    monkeypatch.setattr(logitplug.selection, "text_metric_selector", no_decoding)
    # (its own reweighter alone: the recipe's whole-vocabulary candidate chooses its epochs by decoded text)
    raw["methods"] = [{"name": "plugin-icl-chosen-wd", "method": "plugin", "icl": [0, 1], "train": {"weight_decay": 0.1},
                       "alternatives": []}]
    run_bench(parse_config(raw), progress=False)
    again = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "plugin-icl-chosen-wd" / "seed0.json").read_text())
    assert again["info"]["demonstrations"] == chosen
    assert again["info"]["demonstration_scores"] == rec["info"]["demonstration_scores"]
    assert set(again["info"]["seconds"]) == {"demonstrations", "train", "decode"}


def test_recipe_prompt_is_the_plugins_own_prompt_without_the_plugin(tiny_dir, tmp_path, monkeypatch):
    import logitplug.selection

    raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], data={"train_rows": 12, "validation_rows": 6, "test_inputs": 3},
               methods=[{"name": "plugin-icl", "method": "plugin", "icl": [0, 1]}])
    run_bench(parse_config(raw), progress=False)

    def no_decoding(*a, **k):
        raise AssertionError("the demonstration count was chosen again")

    monkeypatch.setattr(logitplug.selection, "text_metric_selector", no_decoding)  # the plugin's choice is reused
    raw["methods"] = ["zero-shot", "icl-1", {"name": "prompt-icl", "method": "recipe-prompt", "icl": [0, 1]}]
    run_bench(parse_config(raw), progress=False)
    cells = tmp_path / "out" / "cells" / "commongen" / "tiny-bb"
    plugin = json.loads((cells / "plugin-icl" / "seed0.json").read_text())
    prompt = json.loads((cells / "prompt-icl" / "seed0.json").read_text())
    assert prompt["info"]["demonstrations"] == plugin["info"]["demonstrations"]
    assert prompt["info"]["demonstration_scores"] == plugin["info"]["demonstration_scores"]
    assert "artifact" not in prompt["info"]  # nothing trained
    # its outputs are the black box's behind that prompt: icl-K's, K the chosen count (the same draw)
    same = "zero-shot/unseeded" if prompt["info"]["demonstrations"] == 0 else "icl-1/seed0"
    icl = json.loads((cells / f"{same}.json").read_text())
    assert [g["output"] for g in prompt["generations"]] == [g["output"] for g in icl["generations"]]
    assert make_method("recipe-prompt").recipe.name == "logitplug"
    assert make_method("recipe-prompt").recipe_settings() == {"recipe": "logitplug",
                                                               "demonstrations": make_method("plugin").recipe.demonstrations}


def test_plugin_methods_start_from_a_recipe_and_its_settings_key_follows_it(tiny_dir, tmp_path):
    from logitplug.bench.runner import settings_key
    from logitplug.recipes import RECIPES

    default = make_method("plugin")
    assert default.recipe.name == "logitplug" and default.icl == RECIPES["logitplug"].demonstrations
    assert default.train_overrides["copy_augment"] == RECIPES["logitplug"].train["copy_augment"]
    paper = make_method({"name": "plugin-paper", "method": "plugin", "recipe": "paper"})
    assert paper.icl == 0 and "copy_augment" not in paper.train_overrides and paper.recipe_settings() is None
    own = make_method({"name": "p", "method": "plugin", "icl": 0, "train": {"copy_augment": 0.1}})
    assert own.icl == 0 and own.train_overrides["copy_augment"] == 0.1  # the variant's own settings win
    # a variant with its own demonstration count does not go stale when the recipe's count changes
    assert "demonstrations" not in own.recipe_settings() and "demonstrations" in default.recipe_settings()
    # ... nor when the recipe's value of a training setting the variant sets itself changes
    assert "copy_augment" not in own.recipe_settings()["train"] and "copy_augment" in default.recipe_settings()["train"]
    by_text = make_method({"name": "b", "method": "plugin", "train": {"select_by": "BLEU"}})
    assert "alpha_grid" in default.train_overrides and "alpha_grid" not in by_text.train_overrides  # strengths need loss
    assert make_method("small").icl == 0 and make_method("mixture-0.5").train_overrides == {}  # baselines: the paper's
    with pytest.raises(ValueError, match="'recipe' applies to plugin"):
        make_method({"name": "s", "method": "small", "recipe": "paper"})
    with pytest.raises(ValueError, match="unknown recipe"):
        make_method({"name": "p", "method": "plugin", "recipe": "magic"})
    a = parse_config(_raw(tiny_dir, tmp_path / "a", methods=["plugin"]))
    b = parse_config(_raw(tiny_dir, tmp_path / "b", methods=["plugin"], recipe="paper"))
    assert settings_key(a, a.methods[0]) != settings_key(b, b.methods[0])
    with pytest.raises(BenchConfigError, match="unknown recipe"):
        parse_config(_raw(tiny_dir, tmp_path / "c", methods=["plugin"], recipe="magic"))


def test_variants_that_differ_only_in_the_strength_choice_share_one_training_run(tiny_dir, tmp_path, monkeypatch):
    import logitplug.bench.methods as methods

    by_loss = {"name": "by-loss", "method": "plugin", "recipe": "paper", "train": {"alpha_grid": [0.5, 1.0]}}
    by_text = {"name": "by-text", "method": "plugin", "recipe": "paper",
               "train": {"alpha_grid": [0.5, 1.0], "strength_by": "BLEU+ROUGE-L", "strength_candidates": [0.0, 1.0],
                         "select_inputs": 2}}
    raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], methods=[by_loss],
               data={"train_rows": 12, "validation_inputs": 2, "test_inputs": 3})
    run_bench(parse_config(raw), progress=False)
    trainings = []
    real_train = methods.train
    monkeypatch.setattr(methods, "train", lambda *a, **k: trainings.append(1) or real_train(*a, **k))
    renamed = {**by_text, "name": "renamed", "train": {**by_text["train"], "select_renamed": 1.0}}
    renamed_old = {**renamed, "name": "renamed-old", "train": {**renamed["train"], "select_renamed_syllables": "training"}}
    wider = {**by_text, "name": "wider", "train": {**by_text["train"], "select_inputs": 5}}
    raw["methods"] = [by_loss, by_text, renamed, renamed_old, wider]
    run_bench(parse_config(raw), progress=False)
    # the weights trained for by-loss serve the others: only their strengths are chosen anew
    assert trainings == []
    folders = {m: json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / m / "seed0.json").read_text())
               ["info"]["artifact"] for m in ("by-text", "renamed", "renamed-old", "wider")}
    # renamed (with either syllable inventory) or more held-out inputs are other choices, kept apart
    assert len(set(folders.values())) == 4
    # more inputs for the choice than the loss's 2: the rest of the validation split, after those 2
    decoded = {m: json.loads((Path(f) / "strength_outputs.json").read_text())["inputs"] for m, f in folders.items()}
    assert len(decoded["by-text"]) == 2 and len(decoded["wider"]) == 5 and decoded["wider"][:2] == decoded["by-text"]
    cell = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "by-text" / "seed0.json").read_text())
    chosen = cell["info"]["strength_selection"]
    assert chosen["by"] == "BLEU+ROUGE-L" and set(chosen["scores"]) >= {"0", "1"}
    assert cell["info"]["strength"] in (0.0, 0.5, 1.0)
    loss_cell = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "by-loss" / "seed0.json").read_text())
    assert Path(cell["info"]["artifact"]).name.startswith(Path(loss_cell["info"]["artifact"]).name + "-strength-")
    assert "strength_selection" not in json.loads((Path(loss_cell["info"]["artifact"]) / "logitplug.json").read_text())
    # the choice's folder shares the trained weights (a hard link), and saving into it never writes through
    trained_weights = Path(loss_cell["info"]["artifact"]) / "model.safetensors"
    chosen_weights = Path(cell["info"]["artifact"]) / "model.safetensors"
    assert os.path.samefile(trained_weights, chosen_weights)
    before = trained_weights.read_bytes()
    fingerprint = cell["blackbox_fingerprint"]
    rw = Reweighter.from_pretrained(cell["info"]["artifact"], fingerprint)
    with torch.no_grad():
        for p in rw.parameters():
            p.add_(1.0)
    rw.save_pretrained(cell["info"]["artifact"], fingerprint)
    assert trained_weights.read_bytes() == before and chosen_weights.read_bytes() != before


def test_a_plugin_with_alternatives_keeps_the_reweighter_whose_held_out_text_wins(tiny_dir, tmp_path, monkeypatch):
    import logitplug.bench.methods as methods

    by_text = {"alpha_grid": [1.0], "strength_by": "BLEU+ROUGE-L", "strength_candidates": [0.0, 1.0], "select_inputs": 2}
    plain = {"name": "plain", "method": "plugin", "recipe": "paper", "train": by_text}
    gated = {"name": "gated", "method": "plugin", "recipe": "paper", "train": by_text, "reweighter": {"gate": True}}
    decayed = {"name": "decayed", "method": "plugin", "recipe": "paper", "train": {**by_text, "weight_decay": 1.0}}
    raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], methods=[plain, gated, decayed],
               data={"train_rows": 12, "validation_inputs": 2, "test_inputs": 3})
    run_bench(parse_config(raw), progress=False)
    trainings = []
    real_train = methods.train
    monkeypatch.setattr(methods, "train", lambda *a, **k: trainings.append(1) or real_train(*a, **k))
    # an alternative may bring its own training settings (here: weight decay) beside reweighter ones
    choose = {"name": "choose", "method": "plugin", "recipe": "paper", "train": by_text,
              "alternatives": [{"gate": True}, {"train": {"weight_decay": 1.0}}]}
    raw["methods"] = [plain, gated, decayed, choose]
    run_bench(parse_config(raw), progress=False)
    assert trainings == []  # every candidate is one of the variants' trained plugins
    cells = {m: json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / m / "seed0.json").read_text())
             for m in ("plain", "gated", "decayed", "choose")}
    assert len({cells[m]["info"]["artifact"] for m in ("plain", "gated", "decayed")}) == 3
    choice = cells["choose"]["info"]["reweighter_choice"]
    mixes = choice["held_out_mix"]
    assert len(mixes) == 3
    kept = ["plain", "gated", "decayed"][choice["chosen"]]
    assert cells["choose"]["info"]["artifact"] == cells[kept]["info"]["artifact"]
    assert cells["choose"]["generations"] == cells[kept]["generations"]
    assert choice["chosen"] == 0 or mixes[choice["chosen"]] > mixes[0] + 0.02
    # the same candidates decoded as one: each weighted by its strength over their count, no training
    raw["methods"] = [{**choose, "name": "together", "ensemble": True}]
    run_bench(parse_config(raw), progress=False)
    assert trainings == []
    together = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "together" / "seed0.json").read_text())
    ensemble = together["info"]["ensemble"]
    assert ensemble["members"] == [cells[m]["info"]["artifact"] for m in ("plain", "gated", "decayed")]
    strengths = [json.loads((Path(a) / "logitplug.json").read_text())["train_config"]["alpha"] for a in ensemble["members"]]
    assert ensemble["weights"] == pytest.approx([a / 3 for a in strengths])
    assert set(ensemble["held_out"]) == {"BLEU", "ROUGE-L"} and len(ensemble["members_held_out"]) == 3
    assert together["info"]["rule"].endswith("alpha:1")
    assert "ensemble" in together["info"]["seconds"]  # the sum's held-out decoding, kept apart from training
    # 'ties': only the candidates within the choice's margin of the best mix; one alone decodes as the kept plugin
    raw["methods"] = [{**choose, "name": "ties", "ensemble": "ties"}]
    run_bench(parse_config(raw), progress=False)
    assert trainings == []
    ties = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "ties" / "seed0.json").read_text())
    tied = [cells[m]["info"]["artifact"] for m, mix in zip(("plain", "gated", "decayed"), mixes) if mix >= max(mixes) - 0.02]
    if len(tied) > 1:
        assert sorted(ties["info"]["ensemble"]["members"]) == sorted(tied)
    else:
        assert "ensemble" not in ties["info"] and ties["generations"] == cells["choose"]["generations"]
    with pytest.raises(ValueError, match="'ensemble' is true.*'ties'.*or false"):
        make_method({"name": "x", "method": "plugin", "ensemble": "sometimes"})
    with pytest.raises(ValueError, match="'ensemble'.*applies to plugin methods"):
        make_method({"name": "x", "method": "small", "ensemble": True})


def test_model_keys_ignore_settings_left_at_their_defaults():
    from logitplug.bench.methods import _changed
    from logitplug.train import TrainConfig

    assert _changed(TrainConfig(output_dir="x")) == {"output_dir": "x"}  # a new field with a neutral default keeps keys
    assert _changed(TrainConfig(output_dir="x", copy_augment=0.5)) == {"output_dir": "x", "copy_augment": 0.5}
    assert _changed(ReweighterConfig()) == {}


def test_validation_by_input_keeps_every_reference_and_task_generation_overrides_one_task(tiny_dir, tmp_path, monkeypatch):
    from logitplug.bench.runner import prepare_task, settings_key
    from logitplug.data import group_by_input

    raw = _raw(tiny_dir, tmp_path / "out", data={"train_rows": 12, "validation_inputs": 5, "test_inputs": 3})
    cfg = parse_config(raw)
    validation = prepare_task(cfg, "commongen").validation
    groups = group_by_input(validation)
    assert len(groups) == 5 and len(validation) > 5  # CommonGen: several references per concept set
    from logitplug.data import load_task
    full = {ex.input: ex.references for ex in group_by_input(load_task("commongen")["validation"])}
    assert all(set(g.references) == set(full[g.input]) for g in groups)
    # the strength choice may decode more inputs than the loss uses: the pool starts with the
    # validation rows (a choice on select_inputs <= validation_inputs sees what it saw before) and
    # holds every other validation input once, all references kept
    pool = prepare_task(cfg, "commongen").choice_pool
    assert pool[:len(validation)] == validation
    assert {g.input for g in group_by_input(pool)} == set(full) and len(group_by_input(pool)) == len(full)
    assert all(set(g.references) == set(full[g.input]) for g in group_by_input(pool))

    plain = parse_config(_raw(tiny_dir, tmp_path / "out"))
    longer = parse_config(_raw(tiny_dir, tmp_path / "out", task_generation={"commongen": {"max_new_tokens": 9}}))
    assert longer.generation_for("commongen") == {"max_new_tokens": 9, "batch_size": 4}
    method = plain.methods[0]
    assert settings_key(longer, method, "commongen") != settings_key(plain, method, "commongen")
    assert settings_key(longer, method, "e2e") == settings_key(plain, method, "e2e")  # other tasks keep their cells
    # new splits for one task make its cells stale, and only its cells
    import dataclasses
    from logitplug.data import TASKS
    before = {t: settings_key(plain, method, t) for t in ("adidas", "e2e")}
    monkeypatch.setitem(TASKS, "adidas", dataclasses.replace(TASKS["adidas"], splits_version=TASKS["adidas"].splits_version + 1))
    assert settings_key(plain, method, "adidas") != before["adidas"]
    assert settings_key(plain, method, "e2e") == before["e2e"]
    # the lora section concerns LoRA cells only
    other_lora = parse_config(_raw(tiny_dir, tmp_path / "out", lora={"epochs": 2}))
    lora = next(m for m in plain.methods if m.name == "lora")
    assert settings_key(other_lora, method, "e2e") == settings_key(plain, method, "e2e")
    assert settings_key(other_lora, lora, "e2e") != settings_key(plain, lora, "e2e")


def test_task_lora_overrides_one_tasks_lora_cells_only(tiny_dir, tmp_path, monkeypatch):
    from logitplug.bench.methods import LoraFineTune, MethodOutput

    tasks = ["commongen", "e2e"]
    plain = parse_config(_raw(tiny_dir, tmp_path / "out", tasks=tasks, methods=["small", "lora"], seeds=[0]))
    longer = parse_config(_raw(tiny_dir, tmp_path / "out", tasks=tasks, methods=["small", "lora"], seeds=[0],
                               task_lora={"commongen": {"epochs": 4, "patience": 2}}))
    assert longer.lora_for("commongen") == {"epochs": 4, "batch_size": 4, "rank": 2, "patience": 2}
    assert longer.lora_for("e2e") == plain.lora_for("e2e") == {"epochs": 1, "batch_size": 4, "rank": 2}
    small, lora = longer.methods
    assert settings_key(longer, lora, "commongen") != settings_key(plain, lora, "commongen")
    assert settings_key(longer, lora, "e2e") == settings_key(plain, lora, "e2e")
    assert settings_key(longer, small, "commongen") == settings_key(plain, small, "commongen")
    # the cell trains with the task's settings
    seen = {}

    def record(self, ctx):
        seen[ctx.task] = dict(ctx.lora_overrides)
        return MethodOutput(["x"] * len(build_test_prompts(ctx)))

    monkeypatch.setattr(LoraFineTune, "run", record)
    longer.methods = [lora]
    run_bench(longer, progress=False)
    assert seen == {"commongen": longer.lora_for("commongen"), "e2e": longer.lora_for("e2e")}


@pytest.mark.parametrize("task_lora, message", [
    ({"adidas": {"epochs": 4}}, "not in 'tasks'"),
    ({"commongen": {"epoch": 4}}, r"unknown task_lora.commongen setting"),
    ({"commongen": {"epochs": 0}}, "task_lora.commongen: LoraTrainConfig.epochs must be >= 1"),
])
def test_bad_task_lora_is_refused(tiny_dir, tmp_path, task_lora, message):
    with pytest.raises(BenchConfigError, match=message):
        parse_config(_raw(tiny_dir, tmp_path / "out", task_lora=task_lora))


def test_the_table_marks_cells_made_with_other_settings(tiny_dir, tmp_path):
    raw = _raw(tiny_dir, tmp_path / "out", methods=["zero-shot"], seeds=[0])
    table = run_bench(parse_config(raw), progress=False)
    assert "stale" not in table.read_text()
    raw["generation"] = {"max_new_tokens": 5, "batch_size": 4}  # the finished cell no longer matches
    table = run_bench(parse_config(raw), progress=False, only_report=True)
    assert "| zero-shot (stale: 1 of 1 made with other settings) |" in table.read_text()


def test_a_recipe_that_tries_token_vectors_makes_its_plugin_cells_choose(tiny_dir, tmp_path, monkeypatch):
    from logitplug.bench.runner import settings_key
    from logitplug.recipes import RECIPES, Recipe

    by_text = {"alpha_grid": [1.0], "strength_by": "BLEU+ROUGE-L", "strength_candidates": [0.0, 1.0], "select_inputs": 2}
    monkeypatch.setitem(RECIPES, "tries", Recipe("tries", "test", train=by_text, try_token_vectors=True))
    plugin = make_method({"name": "p", "method": "plugin", "recipe": "tries"})
    assert plugin.tries_token_vectors and plugin.recipe_settings()["try_token_vectors"] is True
    # a variant that picks its vectors, turns the choice off, or selects by loss does not choose (nor go stale)
    for spec in ({"reweighter": {"token_vectors_from": str(tiny_dir)}}, {"alternatives": []},
                 {"train": {"strength_by": "loss"}}):
        variant = make_method({"name": "v", "method": "plugin", "recipe": "tries", **spec})
        assert not variant.tries_token_vectors and "try_token_vectors" not in variant.recipe_settings()
    assert "try_token_vectors" not in RECIPES["paper"].settings()  # recipes without it keep their keys
    # a recipe that averages ties makes its choosing plugins decode tied candidates together, unless the
    # variant says otherwise; where nothing is compared there is nothing to average and the key stays
    monkeypatch.setitem(RECIPES, "ties", Recipe("ties", "test", train=by_text, try_token_vectors=True, average_ties=True))
    tying = make_method({"name": "p", "method": "plugin", "recipe": "ties"})
    assert tying.ensemble == "ties" and tying.recipe_settings()["average_ties"] is True
    for spec, ensemble in (({"ensemble": False}, False), ({"ensemble": True}, True), ({"alternatives": []}, "ties")):
        variant = make_method({"name": "v", "method": "plugin", "recipe": "ties", **spec})
        assert variant.ensemble == ensemble and "average_ties" not in variant.recipe_settings()
    assert make_method({"name": "m", "method": "mixture-0.5"}).ensemble is False
    assert "average_ties" not in RECIPES["paper"].settings() and RECIPES["logitplug"].average_ties

    vectors = {"name": "v", "method": "plugin", "recipe": "tries", "reweighter": {"token_vectors_from": str(tiny_dir)}}
    raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], methods=[vectors],
               data={"train_rows": 12, "validation_inputs": 2, "test_inputs": 3})
    run_bench(parse_config(raw), progress=False)
    raw["methods"] = [vectors, {"name": "p", "method": "plugin", "recipe": "tries"}]
    cfg = parse_config(raw)
    run_bench(cfg, progress=False)
    cells = {m: json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / m / "seed0.json").read_text())
             for m in ("v", "p")}
    choice = cells["p"]["info"]["reweighter_choice"]
    assert choice["candidates"] == [{}, {"token_vectors_from": str(tiny_dir)}]  # the black box's own vectors
    if choice["chosen"] == 1:  # the vectors plugin is the variant's, trained once
        assert cells["p"]["info"]["artifact"] == cells["v"]["info"]["artifact"]
    assert cells["p"]["settings_key"] == settings_key(cfg, cfg.methods[1], "commongen")


def test_a_recipe_that_tries_a_blackbox_weight_adds_a_whole_vocabulary_candidate(tiny_dir, tmp_path, monkeypatch):
    from logitplug.recipes import RECIPES, Recipe

    by_text = {"alpha_grid": [1.0], "strength_by": "BLEU+ROUGE-L", "strength_candidates": [0.0, 1.0], "select_inputs": 2,
               "support_k": 4}
    monkeypatch.setitem(RECIPES, "tries-w", Recipe("tries-w", "test", demonstrations=1, train=by_text,
                                                   try_blackbox_weight=0.5))
    plugin = make_method({"name": "p", "method": "plugin", "recipe": "tries-w"})
    assert plugin.tried_blackbox_weight == 0.5 and plugin.recipe_settings()["try_blackbox_weight"] == 0.5
    for spec in ({"alternatives": []}, {"train": {"strength_by": "loss"}}):
        variant = make_method({"name": "v", "method": "plugin", "recipe": "tries-w", **spec})
        assert not variant.tried_blackbox_weight and "try_blackbox_weight" not in variant.recipe_settings()
    assert "try_blackbox_weight" not in RECIPES["paper"].settings()  # recipes without it keep their keys
    with pytest.raises(ValueError, match="alternative's 'icl'"):
        make_method({"name": "v", "method": "plugin", "alternatives": [{"icl": "none"}]})
    raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], methods=[{"name": "p", "method": "plugin", "recipe": "tries-w"}],
               data={"train_rows": 12, "validation_inputs": 2, "test_inputs": 3})
    run_bench(parse_config(raw), progress=False)
    cell = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "p" / "seed0.json").read_text())
    choice = cell["info"]["reweighter_choice"]
    # the whole-vocabulary candidate trains behind the task prompt without the method's demonstrations
    assert choice["candidates"] == [{}, {"train": {"support_k": 0, "blackbox_weight": 0.5}, "icl": 0}]
    assert len(choice["held_out_mix"]) == 2
    kept = json.loads((Path(cell["info"]["artifact"]) / "logitplug.json").read_text())
    assert kept["train_config"]["blackbox_weight"] == (0.5 if choice["chosen"] == 1 else 1.0)
    assert len(kept["template"]["demos"]) == (0 if choice["chosen"] == 1 else 1)
    assert ("bbw:0.5" in cell["info"]["rule"]) == (choice["chosen"] == 1)  # decoded through the rule it kept
    # kept, it decodes test behind its own prompt, and the cell says so
    import logitplug.bench.methods as methods

    monkeypatch.setattr(methods, "choose_plugin", lambda folders, margin=0.02: (1, [0.0, 1.0]))
    prompted_with = []
    real_prompts = methods.test_prompts
    monkeypatch.setattr(methods, "test_prompts", lambda ctx: prompted_with.append(ctx.template.demos) or real_prompts(ctx))
    raw["methods"] = [{"name": "p2", "method": "plugin", "recipe": "tries-w"}]
    run_bench(parse_config(raw), progress=False)
    assert prompted_with == [()]
    info = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / "p2" / "seed0.json").read_text())["info"]
    assert info["demonstrations"] == 0 and info["method_demonstrations"] == 1 and "bbw:0.5" in info["rule"]
    from logitplug.reweighter import read_sidecar

    assert read_sidecar(info["artifact"])["template"]["demos"] == []


def test_a_recipe_tries_the_whole_vocabulary_candidate_only_below_its_support_coverage(tiny_dir, tmp_path, monkeypatch):
    from logitplug.recipes import RECIPES, Recipe

    by_text = {"alpha_grid": [1.0], "strength_by": "BLEU+ROUGE-L", "strength_candidates": [0.0, 1.0], "select_inputs": 2,
               "support_k": 4}
    cells = {}
    for below in (0.01, 1.0):  # a random tiny black box holds some targets in its top 4, never all
        name = f"w-below-{below:g}"
        monkeypatch.setitem(RECIPES, name, Recipe(name, "test", train=by_text, try_blackbox_weight=0.5,
                                                  try_blackbox_weight_below=below))
        plugin = make_method({"name": name, "method": "plugin", "recipe": name})
        assert ("try_blackbox_weight_below" in plugin.recipe_settings()) == (below < 1)  # part of the cells' key
        raw = _raw(tiny_dir, tmp_path / "out", seeds=[0], methods=[{"name": name, "method": "plugin", "recipe": name}],
                   data={"train_rows": 12, "validation_inputs": 2, "test_inputs": 3})
        run_bench(parse_config(raw), progress=False)
        cells[below] = json.loads((tmp_path / "out" / "cells" / "commongen" / "tiny-bb" / name / "seed0.json").read_text())["info"]
    gated, always = cells[0.01], cells[1.0]
    assert 0 < gated["support_coverage"] < 1 and "support_coverage" not in always
    assert "top-4" in gated["reweighter_choice"] and "bbw" not in gated["rule"]  # the configured plugin alone, saying why
    assert len(always["reweighter_choice"]["held_out_mix"]) == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """BENCHMARKS.md cites these configs' commands; a renamed method or setting must not break them unnoticed."""
    cfg = load_config(path)
    assert cfg.methods and cfg.tasks and cfg.blackboxes
