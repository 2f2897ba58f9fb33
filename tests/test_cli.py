import json

import pytest
from typer.testing import CliRunner

from logitplug.cli import app
from tiny import tiny_blackbox

runner = CliRunner()


@pytest.fixture(scope="module")
def bb_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb")
    bb = tiny_blackbox()
    bb.model.save_pretrained(path)
    bb.tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def data(tmp_path):
    rows = [{"mr": f"name[N{i}]", "ref": f"N{i} is a pub."} for i in range(10)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_then_generate_round_trip(tmp_path, bb_dir, data):
    out = tmp_path / "plugin"
    res = runner.invoke(app, ["train", "--train-file", str(data), "--output-dir", str(out), "--blackbox", str(bb_dir),
                              "--input-column", "mr", "--target-column", "ref", "--template", "Q: {input}\\nA:",
                              "--epochs", "2", "--hidden", "32", "--heads", "2", "--ffn", "64",
                              "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    assert "plugin saved to" in res.output
    gen_out = tmp_path / "gen.jsonl"
    res = runner.invoke(app, ["generate", "--input-file", str(data), "--input-column", "mr", "--output", str(gen_out),
                              "--blackbox", str(bb_dir), "--plugin", str(out), "--max-new-tokens", "5"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in gen_out.read_text().splitlines()]
    assert len(lines) == 10 and {"input", "output", "finish_reason"} <= set(lines[0])


def test_recipes_set_defaults_and_explicit_options_win(tmp_path, bb_dir, data):
    args = ["train", "--train-file", str(data), "--blackbox", str(bb_dir), "--input-column", "mr",
            "--target-column", "ref", "--epochs", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
            "--cache-dir", str(tmp_path / "cache"), "--held-out-tokens", "6"]  # held-out text: a tiny model never stops

    def trained(name, *extra):
        res = runner.invoke(app, args + ["--output-dir", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / name / "logitplug.json").read_text())

    trained("default")  # the logitplug recipe: 1 or 3 demonstrations (held-out choice), copy augmentation
    # (its default candidate: the kept one may be the whole-vocabulary candidate, which has no demonstrations)
    default = json.loads((tmp_path / "default" / "candidates" / "default" / "logitplug.json").read_text())
    assert len(default["template"]["demos"]) in (1, 3) and default["train_config"]["copy_augment"] == 0.5
    assert default["template"]["demos"][0][1].endswith("is a pub.") and default["train_config"]["support_k"] == 20
    assert default["train_config"]["support_eos"] is True
    assert trained("mixture", "--rule", "mixture")["train_config"]["support_k"] == 0  # top-k support: product only
    small = trained("small", "--rule", "reweighter")["train_config"]  # the small model alone (README: "How much data")
    assert small["rule"] == "reweighter" and small["support_k"] == 0 and small["alpha_grid"] == []
    # the strength: chosen among the recipe's on held-out loss and stored for decoding; a fixed one is kept
    assert default["train_config"]["alpha"] in default["train_config"]["alpha_grid"] == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2]
    fixed = trained("fixed", "--alpha", "0.5", "--no-support-eos")["train_config"]
    assert fixed["alpha"] == 0.5 and fixed["alpha_grid"] == [] and fixed["support_eos"] is False
    by_bleu = trained("by-bleu", "--strength-by", "BLEU", "--strength-candidates", "0.5,1")
    chosen = by_bleu["strength_selection"]  # held-out inputs decoded at each candidate and at the loss's choice
    assert set(chosen["scores"]) == {"0.5", "1", f"{chosen['by_loss']:g}"}
    assert chosen["scores"][f"{by_bleu['train_config']['alpha']:g}"] == max(chosen["scores"].values())
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "p1"), "--alpha-grid", "0.5,x"])
    assert res.exit_code == 2 and "--alpha-grid takes comma-separated numbers" in res.output
    paper = trained("paper", "--recipe", "paper")
    assert paper["template"]["demos"] == [] and paper["train_config"]["copy_augment"] == 0.0
    assert paper["train_config"]["support_k"] == 0
    mixed = trained("mixed", "--recipe", "paper", "--demonstrations", "2", "--copy-augment", "0.25")
    assert len(mixed["template"]["demos"]) == 2 and mixed["train_config"]["copy_augment"] == 0.25
    explicit_zero = trained("zero", "--demonstrations", "0")  # an explicit default still overrides the recipe
    assert explicit_zero["template"]["demos"] == []
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "p2"), "--demonstrations", "99"])
    assert res.exit_code == 2 and "only" in res.output and "have targets" in res.output
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "p3"), "--recipe", "magic"])
    assert res.exit_code == 2 and "unknown recipe 'magic'" in res.output
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "p4"), "--demonstrations", "one"])
    assert res.exit_code == 2 and "comma-separated counts" in res.output
    # several counts: the black box's held-out score chooses, and the plugin keeps the chosen ones
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "chosen"), "--demonstrations", "0,2",
                                     "--select-inputs", "3"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "demonstrations: " in x).split("demonstrations: ")[1]
    count = int(line.split()[0])
    assert count in (0, 2) and "0: " in line and "2: " in line
    assert len(json.loads((tmp_path / "chosen" / "logitplug.json").read_text())["template"]["demos"]) == count


def test_clear_errors(tmp_path, bb_dir, data):
    res = runner.invoke(app, ["train", "--train-file", str(data), "--output-dir", str(tmp_path / "o"),
                              "--blackbox", str(bb_dir)])
    assert res.exit_code == 2 and "missing column(s) ['input', 'target']" in res.output
    res = runner.invoke(app, ["train", "--train-file", str(data), "--output-dir", str(tmp_path / "o"),
                              "--blackbox", str(tmp_path / "no-model"), "--input-column", "mr", "--target-column", "ref"])
    assert res.exit_code == 2 and "no black box named" in res.output
    res = runner.invoke(app, ["generate", "--input-file", str(data), "--input-column", "mr", "--output",
                              str(tmp_path / "g.jsonl"), "--blackbox", str(bb_dir), "--strategy", "magic"])
    assert res.exit_code == 2 and "strategy must be" in res.output


def test_help_is_complete():
    for cmd in ("train", "generate", "quickstart", "eval", "bench", "serve", "env"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0
    res = runner.invoke(app, ["train", "--help"])
    assert "--weight-decay" in res.output and "--zero-init-head" in res.output


def test_eval_command_scores_e2e_generations(tmp_path):
    from logitplug.data import load_task

    test = load_task("e2e")["test"][:3]
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"input": e.input, "output": e.references[0]}) + "\n" for e in test))
    out = tmp_path / "scores.json"
    res = runner.invoke(app, ["eval", str(gen), "--task", "e2e", "--metrics", "BLEU,ROUGE-L", "--output", str(out)])
    assert res.exit_code == 0, res.output
    scores = json.loads(out.read_text())["scores"]
    assert scores["BLEU"]["score"] == pytest.approx(100.0)
    assert "SER" in scores and scores["SER"]["score"] < 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "not an MR", "output": "x"}) + "\n")
    res = runner.invoke(app, ["eval", str(bad), "--task", "e2e"])
    assert res.exit_code == 2 and "not in e2e/test" in res.output


def test_held_out_text_is_decoded_as_long_as_the_held_out_targets_need(tmp_path, bb_dir, data):
    from logitplug.cli import _held_out_generation
    from logitplug.data import Example

    bb = tiny_blackbox()
    rows = [Example("a", "word " * 40), Example("b", "short")]
    longest = len(bb.tokenizer("word " * 40, add_special_tokens=False)["input_ids"])
    assert _held_out_generation(bb, rows).max_new_tokens == -(-5 * longest // 4) > 64  # not cut at generate's 64
    assert _held_out_generation(bb, rows[1:]).max_new_tokens == 16
    assert _held_out_generation(bb, rows, 7).max_new_tokens == 7
    res = runner.invoke(app, ["train", "--train-file", str(data), "--input-column", "mr", "--target-column", "ref",
                              "--output-dir", str(tmp_path / "p"), "--blackbox", str(bb_dir), "--held-out-tokens", "-1"])
    assert res.exit_code == 2 and "--held-out-tokens must be >= 0" in res.output


def test_train_generate_eval_on_a_named_task(tmp_path, bb_dir):
    plugin = tmp_path / "plugin"
    res = runner.invoke(app, ["train", "--task", "commongen", "--output-dir", str(plugin), "--blackbox", str(bb_dir),
                              "--epochs", "1", "--max-steps", "2", "--hidden", "32", "--heads", "2", "--ffn", "64",
                              "--cache-dir", str(tmp_path / "cache"), "--select-inputs", "10",  # held-out choices on 10 inputs
                              "--held-out-tokens", "6"])
    assert res.exit_code == 0, res.output
    gen = tmp_path / "gen.jsonl"
    res = runner.invoke(app, ["generate", "--task", "commongen", "--plugin", str(plugin), "--blackbox", str(bb_dir),
                              "--output", str(gen), "--max-new-tokens", "4", "--batch-size", "32"])
    assert res.exit_code == 0, res.output
    assert len(gen.read_text().splitlines()) == 496  # distinct concept sets of the test half
    res = runner.invoke(app, ["eval", str(gen), "--task", "commongen", "--metrics", "BLEU,ROUGE-L"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "--output-dir", str(tmp_path / "x"), "--blackbox", str(bb_dir)])
    assert res.exit_code == 2 and "either --train-file or --task" in res.output


def test_bench_reports_config_errors_before_work(tmp_path):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'out'}\ntasks: [e2e]\nblackboxes: [smollm2-135m]\nmethods: [zero-shot, plugn]\n")
    res = runner.invoke(app, ["bench", str(cfg)])
    assert res.exit_code == 2 and "unknown method 'plugn'" in res.output
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["bench", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    cfg.write_text("tasks: [e2e\n")
    res = runner.invoke(app, ["bench", str(cfg)])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    cfg.write_text(f"output_dir: {tmp_path / 'out'}\ntasks: [e2e]\nblackboxes: [smollm2-135m]\nmethods: [zero-shot]\n")
    res = runner.invoke(app, ["bench", str(cfg), "--tasks", "webnlg"])
    assert res.exit_code == 2 and "--tasks: ['webnlg'] are not in" in res.output
    assert "error: 2" not in res.output  # one message, not the exit code reported again
    res = runner.invoke(app, ["bench", str(cfg), "--sizes", "300"])
    assert res.exit_code == 2 and "is not a data-size sweep" in res.output


def test_endpoint_black_box_errors_are_clear(tmp_path, bb_dir, data):
    res = runner.invoke(app, ["generate", "--input-file", str(data), "--input-column", "mr", "--output",
                              str(tmp_path / "o.jsonl"), "--blackbox", "http://127.0.0.1:9/v1"])
    assert res.exit_code == 2 and "--endpoint-model" in res.output
    res = runner.invoke(app, ["generate", "--input-file", str(data), "--input-column", "mr", "--output",
                              str(tmp_path / "o.jsonl"), "--blackbox", "http://127.0.0.1:9/v1@top5",
                              "--endpoint-model", "x", "--tokenizer", str(bb_dir)], env={"LOGITPLUG_HOME": str(tmp_path)})
    assert res.exit_code == 2 and "cannot reach the black box" in res.output, res.output


def test_train_warns_when_the_plugin_is_worse_than_the_black_box(tmp_path, bb_dir, data, monkeypatch):
    import sys

    from logitplug.train import TrainResult

    train_module = sys.modules["logitplug.train"]  # the package re-exports the function under the same name

    monkeypatch.setattr(train_module, "train", lambda *a, **k: TrainResult(tmp_path / "p", 3.0, 2.5, []))
    res = runner.invoke(app, ["train", "--train-file", str(data), "--output-dir", str(tmp_path / "p"),
                              "--blackbox", str(bb_dir), "--input-column", "mr", "--target-column", "ref",
                              "--no-try-token-vectors", "--try-blackbox-weight", "0"])  # one (stubbed) training
    assert res.exit_code == 0 and "does not beat the black box alone" in res.output


def test_serve_tells_how_to_prompt_a_plugin_trained_with_demonstrations(tmp_path, bb_dir, data, monkeypatch):
    import uvicorn

    out = tmp_path / "plugin"
    res = runner.invoke(app, ["train", "--train-file", str(data), "--output-dir", str(out), "--blackbox", str(bb_dir),
                              "--input-column", "mr", "--target-column", "ref", "--epochs", "1", "--hidden", "32",
                              "--heads", "2", "--ffn", "64", "--cache-dir", str(tmp_path / "cache"),
                              "--try-blackbox-weight", "0"])  # the kept plugin has the demonstration
    assert res.exit_code == 0, res.output
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: served.append(kw))
    res = runner.invoke(app, ["serve", "--blackbox", str(bb_dir), "--plugin", str(out)])
    assert res.exit_code == 0, res.output
    assert served and "1 fixed demonstration(s)" in res.output and "prepends them" in res.output
    assert "is a pub." not in res.output  # the example prompt a client sends has no demonstration in it
    res = runner.invoke(app, ["serve", "--blackbox", str(bb_dir), "--plugin", str(out), "--no-demonstrations"])
    assert res.exit_code == 0 and "is a pub." in res.output  # now the client must send them


def test_bench_running_some_methods_keeps_the_whole_configs_table(tmp_path, bb_dir):
    import yaml

    cfg = tmp_path / "bench.yaml"
    cfg.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "tasks": ["commongen"], "blackboxes": [str(bb_dir)],
        "methods": ["zero-shot", "icl-1"], "seeds": [0], "metrics": ["BLEU"],
        "data": {"train_rows": 8, "validation_rows": 4, "test_inputs": 2},
        "generation": {"max_new_tokens": 3, "batch_size": 2}}))
    for method in ("zero-shot", "icl-1"):
        res = runner.invoke(app, ["bench", str(cfg), "--methods", method, "--no-progress"])
        assert res.exit_code == 0, res.output
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| zero-shot |" in table and "| icl-1 |" in table  # the first run's cell is still in the table


def test_try_token_vectors_trains_both_and_keeps_the_better_held_out_text(tmp_path, bb_dir, data):
    args = ["train", "--train-file", str(data), "--blackbox", str(bb_dir), "--input-column", "mr",
            "--target-column", "ref", "--epochs", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
            "--cache-dir", str(tmp_path / "cache"), "--strength-candidates", "0,1", "--try-blackbox-weight", "0"]
    out = tmp_path / "plugin"
    res = runner.invoke(app, args + ["--output-dir", str(out), "--try-token-vectors"])
    assert res.exit_code == 0, res.output
    choice = json.loads((out / "choice.json").read_text())
    assert set(choice["held_out_mix"]) == {"default", "token-vectors"} and "kept the" in res.output
    kept = out / "candidates" / choice["chosen"]
    assert (out / "model.safetensors").read_bytes() == (kept / "model.safetensors").read_bytes()
    vectors = json.loads((out / "candidates" / "token-vectors" / "logitplug.json").read_text())
    assert vectors["reweighter_config"]["token_vectors_from"] == str(bb_dir)
    gen_out = tmp_path / "gen.jsonl"
    res = runner.invoke(app, ["generate", "--input-file", str(data), "--input-column", "mr", "--output", str(gen_out),
                              "--blackbox", str(bb_dir), "--plugin", str(out), "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    # the token-vector plugin does not store its table: if the folder it recorded has moved, the
    # black box's own embeddings serve, when they are the same table
    import shutil

    moved = tmp_path / "vectors-plugin"
    shutil.copytree(out / "candidates" / "token-vectors", moved)
    config = json.loads((moved / "reweighter_config.json").read_text())
    (moved / "reweighter_config.json").write_text(json.dumps({**config, "token_vectors_from": str(tmp_path / "gone")}))
    generate = ["generate", "--input-file", str(data), "--input-column", "mr", "--output", str(gen_out),
                "--plugin", str(moved), "--max-new-tokens", "3"]
    res = runner.invoke(app, generate + ["--blackbox", str(bb_dir)])
    assert res.exit_code == 0, res.output
    other = tiny_blackbox(seed=1)  # the same tokenizer, other vectors
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    res = runner.invoke(app, generate + ["--blackbox", str(tmp_path / "other")])
    assert res.exit_code == 2 and "does not store" in res.output
    # a second run finds the plugin made; a bad combination fails before any training
    res = runner.invoke(app, args + ["--output-dir", str(out), "--try-token-vectors"])
    assert res.exit_code == 2 and "already holds a trained plugin" in res.output
    # interrupted before the choice was copied: a rerun reuses both finished candidates, trains nothing
    (out / "logitplug.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "candidates").glob("*/model.safetensors")}
    res = runner.invoke(app, args + ["--output-dir", str(out), "--try-token-vectors"])
    assert res.exit_code == 0, res.output
    assert len(stamps) == 2 and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((out / "choice.json").read_text())["chosen"] == choice["chosen"]
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "p2"), "--try-token-vectors", "--strength-by", "loss"])
    assert res.exit_code == 2 and "--strength-by" in res.output and not (tmp_path / "p2").exists()
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "p3"), "--try-token-vectors",
                                     "--token-vectors-from", str(bb_dir)])
    assert res.exit_code == 2 and "--token-vectors-from" in res.output


def test_try_blackbox_weight_adds_a_whole_vocabulary_candidate_or_fails_before_training(tmp_path, bb_dir, data):
    args = ["train", "--train-file", str(data), "--blackbox", str(bb_dir), "--input-column", "mr",
            "--target-column", "ref", "--epochs", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
            "--cache-dir", str(tmp_path / "cache"), "--strength-by", "BLEU+ROUGE-L", "--strength-candidates", "0,1",
            "--support-k", "4", "--held-out-tokens", "4", "--no-try-token-vectors"]
    out = tmp_path / "plugin"
    res = runner.invoke(app, args + ["--output-dir", str(out), "--try-blackbox-weight", "0.5", "--demonstrations", "1"])
    assert res.exit_code == 0, res.output
    choice = json.loads((out / "choice.json").read_text())
    assert set(choice["held_out_mix"]) == {"default", "blackbox-weight-0.5"}
    tried = json.loads((out / "candidates" / "blackbox-weight-0.5" / "logitplug.json").read_text())
    default = json.loads((out / "candidates" / "default" / "logitplug.json").read_text())
    # the whole-vocabulary candidate is prompted without the run's demonstrations
    assert len(default["template"]["demos"]) == 1 and tried["template"]["demos"] == []
    tried, default = tried["train_config"], default["train_config"]
    assert (tried["support_k"], tried["blackbox_weight"]) == (0, 0.5) and (default["support_k"], default["blackbox_weight"]) == (4, 1.0)
    kept = json.loads((out / "logitplug.json").read_text())["train_config"]
    assert kept["blackbox_weight"] == (0.5 if choice["chosen"] == "blackbox-weight-0.5" else 1.0)
    gen_out = tmp_path / "gen.jsonl"
    res = runner.invoke(app, ["generate", "--input-file", str(data), "--input-column", "mr", "--output", str(gen_out),
                              "--blackbox", str(bb_dir), "--plugin", str(out / "candidates" / "blackbox-weight-0.5"),
                              "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    gated = tmp_path / "gated"  # a random tiny black box's top half of its 320 tokens holds well over 1% of the targets
    res = runner.invoke(app, args + ["--output-dir", str(gated), "--try-blackbox-weight", "0.5", "--support-k", "160",
                                     "--try-blackbox-weight-below", "0.01", "--demonstrations", "1"])
    assert res.exit_code == 0, res.output
    choice = json.loads((gated / "choice.json").read_text())
    assert list(choice["held_out_mix"]) == ["default"] and "top-160" in choice["not_tried"]["blackbox-weight-0.5"]
    assert 0 < choice["support_coverage"] < 1 and not (gated / "candidates" / "blackbox-weight-0.5").exists()
    for bad, says in ((["--try-blackbox-weight", "1"], "(0, 1)"), (["--try-blackbox-weight", "0.5", "--strength-by", "loss"],
                      "strength_by"), (["--try-blackbox-weight", "0.5", "--try-blackbox-weight-below", "0"], "(0, 1]")):
        res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "bad")] + bad)
        assert res.exit_code == 2 and "--try-blackbox-weight" in res.output and says in res.output, res.output
        assert not (tmp_path / "bad").exists()


def test_a_recipe_that_averages_ties_writes_a_plugin_that_decodes_its_tied_candidates_together(
        tmp_path, bb_dir, data, monkeypatch):
    import importlib

    from logitplug.recipes import RECIPES, Recipe

    by_text = {"strength_by": "BLEU+ROUGE-L", "strength_candidates": (0.0, 1.0), "select_inputs": 2}
    monkeypatch.setitem(RECIPES, "ties", Recipe("ties", "test", train=by_text, try_token_vectors=True,
                                                average_ties=True))
    # held-out text that cannot tell the two candidates apart (tiny random models may or may not tie)
    train_module = importlib.import_module("logitplug.train")  # the module, not the function logitplug re-exports
    monkeypatch.setattr(train_module, "choose_plugin", lambda folders, margin: (0, [0.5] * len(folders)))
    args = ["train", "--train-file", str(data), "--blackbox", str(bb_dir), "--input-column", "mr",
            "--target-column", "ref", "--epochs", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
            "--cache-dir", str(tmp_path / "cache"), "--recipe", "ties"]
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "tied")])
    assert res.exit_code == 0, res.output
    assert "default and token-vectors" in res.output and "together" in res.output
    ensemble = json.loads((tmp_path / "tied" / "ensemble.json").read_text())
    assert ensemble["members"] == ["candidates/default", "candidates/token-vectors"]
    gen = ["generate", "--input-file", str(data), "--input-column", "mr", "--blackbox", str(bb_dir),
           "--plugin", str(tmp_path / "tied"), "--max-new-tokens", "3"]
    res = runner.invoke(app, gen + ["--output", str(tmp_path / "tied.jsonl")])
    assert res.exit_code == 0, res.output
    # told not to, the same candidates (reused, not retrained) leave the kept one alone
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "kept"), "--no-average-ties"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "kept" / "logitplug.json").exists() and not (tmp_path / "kept" / "ensemble.json").exists()
    res = runner.invoke(app, gen[:-4] + ["--plugin", str(tmp_path / "kept"), "--max-new-tokens", "3",
                                         "--output", str(tmp_path / "kept.jsonl")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tied.jsonl").read_text() != (tmp_path / "kept.jsonl").read_text()


def test_a_recipe_that_tries_token_vectors_chooses_unless_told_not_to_or_it_cannot(tmp_path, bb_dir, data, monkeypatch):
    from logitplug.cli import _token_vectors_obstacle
    from logitplug.recipes import RECIPES, Recipe
    from logitplug.reweighter import ReweighterConfig
    from logitplug.train import TrainConfig

    by_text = {"strength_by": "BLEU+ROUGE-L", "strength_candidates": (0.0, 1.0), "select_inputs": 2}
    monkeypatch.setitem(RECIPES, "tries", Recipe("tries", "test", train=by_text, try_token_vectors=True))
    args = ["train", "--train-file", str(data), "--blackbox", str(bb_dir), "--input-column", "mr",
            "--target-column", "ref", "--epochs", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
            "--cache-dir", str(tmp_path / "cache"), "--recipe", "tries"]
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "chosen")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "chosen" / "choice.json").read_text())["chosen"] in ("default", "token-vectors")
    res = runner.invoke(app, args + ["--output-dir", str(tmp_path / "single"), "--no-try-token-vectors"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "single" / "logitplug.json").exists() and not (tmp_path / "single" / "candidates").exists()
    # an endpoint whose tokenizer folder holds no weights: the recipe's choice steps aside and says so
    tok_only = tmp_path / "tok"
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(str(bb_dir)).save_pretrained(tok_only)
    tcfg, rcfg = TrainConfig(output_dir="x", strength_by="BLEU", strength_candidates=(0.0, 1.0)), ReweighterConfig()
    assert _token_vectors_obstacle(str(bb_dir), None, tcfg, rcfg) is None
    assert _token_vectors_obstacle("http://127.0.0.1:9/v1", str(tok_only), tcfg, rcfg)[0] is False  # said aloud
    assert _token_vectors_obstacle(str(bb_dir), None, TrainConfig(output_dir="x"), rcfg)[0] is True  # by loss
