"""Command line: ``logitplug train | generate | eval | bench | serve | quickstart | env``. Thin wrappers over the library."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt a black-box LM to a task through its next-token log-probabilities.")


def _help(cls: type, name: str) -> str:
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


_BB_HELP = ("registered name, model folder or .gguf file; NAME@topK for top-K access only; or the URL of an "
            "OpenAI-compatible endpoint, URL@topK, chat+URL for a chat endpoint (with --endpoint-model and --tokenizer)")


def _is_endpoint(name: str) -> bool:
    """Whether a --blackbox value names an OpenAI-compatible endpoint (URL or chat+URL)."""
    return name.removeprefix("chat+").startswith(("http://", "https://"))


def _load_bb(name: str, endpoint_model: Optional[str] = None, tokenizer: Optional[str] = None):
    from .blackbox import load_blackbox, open_endpoint, split_topk

    try:
        api = "completions"
        if name.startswith("chat+"):
            api, name = "chat", name[len("chat+"):]
        if _is_endpoint(name):
            if not endpoint_model or not tokenizer:
                _fail("an endpoint black box needs --endpoint-model (the served model's id) and --tokenizer "
                      "(a registered name or a folder with the served model's tokenizer)")
            url, top_k = split_topk(name)
            return open_endpoint(url, endpoint_model, tokenizer, top_k=20 if top_k is None else top_k, api=api)  # type: ignore[arg-type]
        return load_blackbox(name)
    except (FileNotFoundError, ModuleNotFoundError, KeyError, ValueError) as e:
        _fail(str(e))


def _examples(path: Path, input_column: str, target_column: Optional[str]):
    from .data import DataError, load_table

    try:
        return load_table(path, input_column, target_column)
    except (DataError, FileNotFoundError) as e:
        _fail(str(e))


from .data import TASKS  # noqa: E402
from .data import TEMPLATES as _TEMPLATES  # noqa: E402
from .decode import GenerationConfig as _G  # noqa: E402
from .reweighter import ReweighterConfig as _R  # noqa: E402
from .recipes import DEFAULT_RECIPE, RECIPES  # noqa: E402
from .train import TrainConfig as _T  # noqa: E402

_TEMPLATE_HELP = f"prompt template: a name ({', '.join(sorted(_TEMPLATES))}) or text with {{input}}"
_TASK_HELP = f"a task with the paper's splits ({', '.join(sorted(TASKS))})"


def _task_splits(task: str, data_dir: Optional[Path], seed: int):
    from .data import load_task

    try:
        return load_task(task, data_dir, seed)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


_CLI_NAME = {"num_layers": "layers", "hidden_size": "hidden", "num_heads": "heads", "intermediate_size": "ffn"}


def _given(ctx: typer.Context, option: str) -> bool:
    """Whether the user set ``option`` on the command line (not left at its default)."""
    source = ctx.get_parameter_source(option)  # typer vendors click: compare the enum by name
    return source is not None and source.name != "DEFAULT"


def _apply_recipe(ctx: typer.Context, name: str, values: dict) -> dict:
    """``values`` (the command's options) with the recipe's settings wherever the user left an
    option at its default: explicit options always win."""
    from .recipes import get_recipe

    try:
        recipe = get_recipe(name)
    except ValueError as e:
        _fail(str(e))
    # settings that do not apply to the user's rule or selection keep the user's value
    train = recipe.train_for(values.get("rule", "product"), values.get("select_by", "loss"))
    wanted = {"demonstrations": recipe.demonstrations, **train,
              **{_CLI_NAME.get(k, k): v for k, v in recipe.reweighter.items()}}
    if recipe.try_token_vectors:
        wanted["try_token_vectors"] = True
    if recipe.average_ties:
        wanted["average_ties"] = True
    if recipe.try_blackbox_weight:
        wanted["try_blackbox_weight"] = recipe.try_blackbox_weight
        wanted["try_blackbox_weight_below"] = recipe.try_blackbox_weight_below
    out = dict(values)
    for option, value in wanted.items():
        if option not in out:
            raise KeyError(f"recipe {name!r} sets {option!r}, which `train` has no option for")
        if not _given(ctx, option):
            out[option] = value
    return out


def _held_out_generation(bb: Any, eval_rows: list, max_new_tokens: int = 0) -> Any:
    """How `train` decodes held-out inputs: as `generate` does by default (greedy, penalty 1.1, an
    answer ends at a blank line), at most ``max_new_tokens`` tokens; 0: a quarter more than the
    longest held-out target (at least 16), so long answers are scored whole."""
    import math

    from .decode import GenerationConfig

    if max_new_tokens == 0:
        longest = max((len(bb.tokenizer(r.target, add_special_tokens=False)["input_ids"]) for r in eval_rows), default=0)
        max_new_tokens = max(16, math.ceil(1.25 * longest))
    return GenerationConfig(max_new_tokens=max_new_tokens, repetition_penalty=1.1, stop_strings=("\n\n",))


def _token_vectors_obstacle(blackbox: str, tokenizer: str | None, tcfg: Any, rcfg: Any) -> tuple[bool, str] | None:
    """Why a second reweighter on the black box's token vectors cannot be tried here, or None.
    (True, why): the user's own settings rule it out; (False, why): the black box's embeddings are
    not at hand. An explicit --try-token-vectors fails on either; the recipe's choice steps aside,
    saying so only in the second case, which the user may not expect."""
    from .blackbox.registry import missing_token_vectors
    from .train import token_vector_conflict

    conflict = token_vector_conflict(rcfg, tcfg.strength_by)
    if conflict is not None:
        return True, f"--try-token-vectors: {conflict} (the options: --token-vectors-from, --init-from, --strength-by)"
    missing = missing_token_vectors(blackbox, tokenizer)
    if missing is not None:
        return False, f"--try-token-vectors needs the black box's pretrained token embeddings: {missing}"
    return None


@app.command()
def train(
    ctx: typer.Context,
    train_file: Optional[Path] = typer.Option(None, help="CSV/TSV/JSONL with training examples (or use --task)"),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP + " (instead of --train-file)"),
    data_dir: Optional[Path] = typer.Option(None, help="data folder for --task (default: $LOGITPLUG_DATA or ../shared/data)"),
    output_dir: Path = typer.Option(..., help=_help(_T, "output_dir")),
    blackbox: str = typer.Option("smollm2-135m", help=_BB_HELP),
    endpoint_model: Optional[str] = typer.Option(None, help="model id at the endpoint (endpoint black boxes)"),
    tokenizer: Optional[str] = typer.Option(None, help="the served model's tokenizer: registered name or folder (endpoint black boxes)"),
    eval_file: Optional[Path] = typer.Option(None, help="held-out examples for early stopping (default: split off train)"),
    eval_fraction: float = typer.Option(0.4, help="fraction of distinct inputs held out when --eval-file is not given (inputs that share "
                                       "a target count as one and stay on one side, so no held-out answer is a training one)"),
    input_column: str = typer.Option("input", help="column holding the task input"),
    target_column: str = typer.Option("target", help="column holding the target text"),
    template: Optional[str] = typer.Option(None, help=_TEMPLATE_HELP + " (default: the task's, else 'plain')"),
    chat: bool = typer.Option(False, help="wrap the prompt in the tokenizer's chat template"),
    recipe: str = typer.Option(
        DEFAULT_RECIPE, help="named settings to start from: " + "; ".join(f"'{r.name}': {r.description}"
                                                                           for r in RECIPES.values())
        + ". Options you give override it"),
    demonstrations: str = typer.Option(
        "0", help="solved training examples (drawn by --seed) fixed at the head of every prompt, in training and in "
                  "`generate` (the plugin stores them with its template); several counts, e.g. '1,3': the one whose "
                  "prompt alone scores best in BLEU on (at most --select-inputs) held-out inputs"),
    epochs: int = typer.Option(80, help=_help(_T, "epochs")),
    batch_size: int = typer.Option(8, help=_help(_T, "batch_size")),
    lr: float = typer.Option(5e-4, help=_help(_T, "lr")),
    weight_decay: float = typer.Option(0.01, help=_help(_T, "weight_decay")),
    patience: int = typer.Option(3, help=_help(_T, "patience")),
    evals_per_epoch: int = typer.Option(1, help=_help(_T, "evals_per_epoch")),
    max_length: int = typer.Option(256, help=_help(_T, "max_length")),
    rule: str = typer.Option("product", help=_help(_T, "rule")),
    alpha: float = typer.Option(1.0, help=_help(_T, "alpha")),
    alpha_grid: str = typer.Option("", help=_help(_T, "alpha_grid") + " (comma-separated, e.g. '0.25,0.5,1')"),
    strength_by: str = typer.Option("loss", help=_help(_T, "strength_by")),
    strength_candidates: str = typer.Option("", help=_help(_T, "strength_candidates") + " (comma-separated)"),
    strength_margin: float = typer.Option(0.0, help=_help(_T, "strength_margin")),
    mixture_weight: float = typer.Option(0.5, help=_help(_T, "mixture_weight")),
    support_k: int = typer.Option(0, help=_help(_T, "support_k")),
    blackbox_weight: float = typer.Option(1.0, help=_help(_T, "blackbox_weight")),
    support_eos: bool = typer.Option(False, help=_help(_T, "support_eos")),
    select_by: str = typer.Option("loss", help=_help(_T, "select_by")),
    select_window: int = typer.Option(1, help=_help(_T, "select_window")),
    select_inputs: int = typer.Option(100, help=_help(_T, "select_inputs")),
    select_renamed: float = typer.Option(0.0, help=_help(_T, "select_renamed")),
    select_renamed_syllables: str = typer.Option("held-out", help=_help(_T, "select_renamed_syllables")),
    copy_augment: float = typer.Option(0.0, help=_help(_T, "copy_augment")),
    layers: int = typer.Option(1, help=_help(_R, "num_layers")),
    hidden: int = typer.Option(256, help=_help(_R, "hidden_size")),
    heads: int = typer.Option(4, help=_help(_R, "num_heads")),
    ffn: int = typer.Option(1024, help=_help(_R, "intermediate_size")),
    zero_init_head: bool = typer.Option(False, help=_help(_R, "zero_init_head")),
    gate: bool = typer.Option(False, help=_help(_R, "gate")),
    copy_feature: bool = typer.Option(False, help=_help(_R, "copy_feature")),
    neutral_unseen: bool = typer.Option(False, help=_help(_R, "neutral_unseen")),
    init_from: Optional[str] = typer.Option(None, help=_help(_R, "init_from")),
    token_vectors_from: Optional[str] = typer.Option(None, help=_help(_R, "token_vectors_from")),
    try_token_vectors: bool = typer.Option(
        False, "--try-token-vectors/--no-try-token-vectors", show_default=False,
        help="also train a plugin whose token vectors are the black box's own pretrained embeddings (frozen; "
             "an endpoint's --tokenizer must then name a model with weights) and keep whichever writes the better "
             "held-out text (needs --strength-by a text metric, as the default recipe has). On by default with the "
             "default recipe, which then steps aside (saying so) where it cannot apply; a second training, from the "
             "same cached log-probs. With it CommonGen beats its prompt on every seed and WebNLG leads ICL-3 on all "
             "four means (BENCHMARKS.md). Both plugins stay under OUTPUT_DIR/candidates, the kept one is copied to "
             "OUTPUT_DIR, choice.json says why"),
    try_blackbox_weight: float = typer.Option(
        0.0, help="also train a plugin over the whole vocabulary that scales the black box's log-probs by this weight "
                  "(in (0, 1); 0: not tried), behind the task prompt without demonstrations and on every training row, "
                  "and keep it where it writes the better held-out text (needs --strength-by a text metric). Trusting "
                  "the black box less lets the plugin write the task's own stock phrasing where it lies outside the "
                  "black box's top tokens: Adidas kept it on every seed, CommonGen, E2E and WebNLG rejected it. Without "
                  "demonstrations it learns the phrasing itself. The recipe may set more of its training (the default "
                  "recipe chooses its epoch by held-out BLEU, where held-out loss stopped it too early on Adidas). It "
                  "trains under OUTPUT_DIR/candidates beside the others, from the same cached log-probs; a "
                  "whole-vocabulary training costs several top-20 ones"),
    try_blackbox_weight_below: float = typer.Option(
        1.0, help="with --try-blackbox-weight: try that plugin only where fewer than this share of the training "
                  "targets lie in the black box's top-k support (read from the recorded log-probs; 1: always). Where "
                  "most do, the top-k plugins already reach the task's text: E2E (91% in the top 20) and WebNLG (96%) "
                  "rejected the whole-vocabulary plugin on every seed, Adidas (70%) kept it"),
    average_ties: bool = typer.Option(
        False, "--average-ties/--no-average-ties", show_default=False,
        help="where two or more of the plugins trained (--try-token-vectors) behind the same prompt and rule write "
             "held-out text within 0.02 of the best (held-out text cannot tell them apart), decode through all of "
             "them at once, their logits averaged at their strengths (OUTPUT_DIR/ensemble.json; generate reads it). On "
             "by default with the default recipe: over the four such ties on the benchmark boards it raised the test "
             "means of all four metrics (BENCHMARKS.md)"),
    held_out_tokens: int = typer.Option(
        0, help="longest held-out answer, in tokens, when held-out text is decoded (demonstration count, strength, "
                "reweighter choices); 0: a quarter more than the longest held-out target, so long targets are not cut "
                "and short ones do not wait for 64 tokens"),
    cache: bool = typer.Option(True, help=_help(_T, "cache")),
    cache_dir: Optional[str] = typer.Option(None, help=_help(_T, "cache_dir")),
    cache_top_k: int = typer.Option(256, help=_help(_T, "cache_top_k")),
    checkpoint_every: int = typer.Option(200, help=_help(_T, "checkpoint_every")),
    max_steps: int = typer.Option(0, help=_help(_T, "max_steps")),
    seed: int = typer.Option(0, help=_help(_T, "seed")),
) -> None:
    """Train a plugin for a black box on (input, target) examples. Ctrl-C saves a checkpoint;
    the same command resumes it."""
    from .data import get_template, split_by_input
    from .reweighter import ReweighterConfig
    from .train import TrainConfig, TrainingInterrupted
    from .train import train as run_train

    o = _apply_recipe(ctx, recipe, {k: v for k, v in locals().items() if k not in ("ctx", "recipe")})
    demonstrations = o["demonstrations"]
    if _given(ctx, "alpha"):  # a strength the user fixes is not searched over
        if not _given(ctx, "alpha_grid"):
            o["alpha_grid"] = ()
        if not _given(ctx, "strength_by"):
            o["strength_by"] = "loss"
    for name in ("alpha_grid", "strength_candidates"):
        if isinstance(o[name], str):
            try:
                o[name] = tuple(float(a) for a in o[name].split(",") if a.strip())
            except ValueError:
                _fail(f"--{name.replace('_', '-')} takes comma-separated numbers, got {o[name]!r}")

    try:
        if (task is None) == (train_file is None):
            _fail("give either --train-file or --task")
        if held_out_tokens < 0:  # before any data or model is loaded
            _fail(f"--held-out-tokens must be >= 0 (0: from the held-out targets), got {held_out_tokens}")
        tmpl = get_template(template or (TASKS[task].template if task in TASKS else "plain"), chat=chat)
        tcfg = TrainConfig(output_dir=str(output_dir), **{f.name: o[f.name] for f in fields(TrainConfig)
                                                          if f.name in o and f.name != "output_dir"})
        rcfg = ReweighterConfig(**{f.name: o[_CLI_NAME.get(f.name, f.name)] for f in fields(ReweighterConfig)
                                   if _CLI_NAME.get(f.name, f.name) in o})
    except ValueError as e:
        _fail(str(e))
    source = None  # where the second reweighter's token vectors come from, when one is tried
    if o["try_token_vectors"]:  # checked before any training, so a bad combination costs nothing
        from .blackbox.registry import token_vector_source

        obstacle = _token_vectors_obstacle(blackbox, tokenizer, tcfg, rcfg)
        if obstacle is None:
            source = token_vector_source(blackbox, tokenizer)
        elif _given(ctx, "try_token_vectors"):
            _fail(obstacle[1])
        elif not obstacle[0]:
            typer.echo(f"training the configured reweighter only (the recipe's choice steps aside): {obstacle[1]}; "
                       "--no-try-token-vectors silences this")
    tried_weight = 0.0  # the black-box weight of a third, whole-vocabulary reweighter, when one is tried
    if not 0 < o["try_blackbox_weight_below"] <= 1:
        _fail(f"--try-blackbox-weight-below must be in (0, 1], got {o['try_blackbox_weight_below']}")
    if o["try_blackbox_weight"]:
        from .train import blackbox_weight_conflict

        conflict = blackbox_weight_conflict(o["try_blackbox_weight"], tcfg.rule, tcfg.strength_by)
        if conflict is None:
            tried_weight = float(o["try_blackbox_weight"])
        elif _given(ctx, "try_blackbox_weight"):
            _fail(f"--try-blackbox-weight: {conflict}")
        else:  # the recipe's choice steps aside where the user's own settings rule it out
            typer.echo(f"no whole-vocabulary reweighter tried (the recipe's choice steps aside): {conflict}")
    if task is not None:  # the task's own validation split does early stopping
        splits = _task_splits(task, data_dir, seed)
        train_rows, eval_rows = splits["train"], splits["validation"]
    else:
        train_rows = _examples(train_file, input_column, target_column)  # type: ignore[arg-type]
        if eval_file is not None:
            eval_rows = _examples(eval_file, input_column, target_column)
        else:
            if not 0 < eval_fraction < 1:
                _fail(f"--eval-fraction must be in (0, 1), got {eval_fraction}")
            eval_rows, train_rows = split_by_input(train_rows, eval_fraction, seed, same_target_together=True)
            if not eval_rows or not train_rows:
                _fail("too few distinct inputs to split off a held-out set; pass --eval-file")
    from .selection import demonstration_counts, fix_demonstrations

    try:
        counts = demonstration_counts(demonstrations)  # "1,3" from the command line, or the recipe's
    except ValueError:
        _fail(f"--demonstrations must be a count >= 0 or comma-separated counts, got {demonstrations!r}")
    bb = _load_bb(blackbox, endpoint_model, tokenizer)
    # held-out decoding as `generate` decodes by default: greedy, penalty 1.1, an answer ends at a blank line
    held_out_generation = _held_out_generation(bb, eval_rows, held_out_tokens)
    plain = (tmpl, train_rows)  # the prompt without demonstrations and every row: the whole-vocabulary candidate's
    if counts:
        try:
            tmpl, train_rows, chosen = fix_demonstrations(
                bb, tmpl, train_rows, eval_rows, counts, seed, held_out_generation, max_inputs=tcfg.select_inputs)
        except ValueError as e:
            _fail(str(e))
        if "demonstration_scores" in chosen:
            shown = ", ".join(f"{k}: {v:.2f}" for k, v in chosen["demonstration_scores"].items())
            typer.echo(f"demonstrations: {chosen['demonstrations']} (held-out BLEU of the black box alone by count: {shown})")
    from .data import DataError

    try:
        from .selection import held_out_scorers

        scorers = held_out_scorers(tcfg, bb, tmpl, eval_rows, held_out_generation)
        from .train import plugin_candidates

        # the recipe's own training of the whole-vocabulary plugin (a known recipe: _apply_recipe checked
        # its name), except where the user set an option
        weight_train = {k: v for k, v in RECIPES[recipe].blackbox_weight_train.items() if not _given(ctx, k)}
        candidates = plugin_candidates(rcfg, source, tried_weight, plain, o["try_blackbox_weight_below"], weight_train)
        if len(candidates) > 1:
            from .train import train_and_choose

            result, choice = train_and_choose(bb, train_rows, eval_rows, tmpl, tcfg, candidates,
                                              generation=held_out_generation, average_ties=o["average_ties"],
                                              **scorers)
            typer.echo(f"kept the {choice['chosen']} reweighter (held-out text: "
                       + ", ".join(f"{n} {m:.3f}" for n, m in choice["held_out_mix"].items()) + ")")
            if "averaged" in choice:
                typer.echo(f"held-out text ties {' and '.join(choice['averaged']['members'])}: the plugin decodes "
                           "through them together (--no-average-ties keeps the first alone)")
            for name, why in choice.get("not_tried", {}).items():
                typer.echo(f"{name} not tried: {why}")
        else:
            result = run_train(bb, train_rows, eval_rows, tmpl, tcfg, rcfg, **scorers)
    except TrainingInterrupted as e:
        typer.secho(str(e), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    except (DataError, ValueError, FileExistsError, FileNotFoundError) as e:
        _fail(str(e))
    except RuntimeError as e:  # an unreachable endpoint: recorded rows stay in the cache
        from .blackbox import BlackBoxUnavailable

        if not isinstance(e, BlackBoxUnavailable):
            raise
        _fail(f"{e}\nLog-probs recorded so far are cached; rerun the same command to continue.")
    typer.echo(
        f"plugin saved to {result.plugin_dir}: held-out loss {result.best_loss:.4f} per token "
        f"(black box alone {result.blackbox_loss:.4f})"
    )
    if result.best_loss >= result.blackbox_loss:
        typer.secho("warning: the plugin does not beat the black box alone on held-out data, so it will likely make "
                    "outputs worse; try --zero-init-head, a lower --lr, or more training rows", fg=typer.colors.YELLOW,
                    err=True)


@app.command()
def generate(
    input_file: Optional[Path] = typer.Option(None, help="CSV/TSV/JSONL with inputs (or use --task)"),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP + ": generate for the distinct inputs of --split"),
    split: str = typer.Option("test", help="split of --task"),
    data_dir: Optional[Path] = typer.Option(None, help="data folder for --task (default: $LOGITPLUG_DATA or ../shared/data)"),
    output: Path = typer.Option(..., help="JSONL file to write (input, output, finish_reason per line)"),
    blackbox: str = typer.Option("smollm2-135m", help=_BB_HELP),
    endpoint_model: Optional[str] = typer.Option(None, help="model id at the endpoint (endpoint black boxes)"),
    tokenizer: Optional[str] = typer.Option(None, help="the served model's tokenizer: registered name or folder (endpoint black boxes)"),
    plugin: Optional[Path] = typer.Option(None, help="trained plugin folder; omit for the black box alone"),
    input_column: str = typer.Option("input", help="column holding the task input"),
    template: Optional[str] = typer.Option(None, help=_TEMPLATE_HELP + " (default: the plugin's, else the task's, else 'plain')"),
    chat: bool = typer.Option(False, help="wrap the prompt in the tokenizer's chat template"),
    rule: Optional[str] = typer.Option(
        None, help="combination rule: product, product-topk, mixture, reweighter, blackbox (default: the one the plugin was trained through)"),
    alpha: Optional[float] = typer.Option(None, help="reweighting strength for product rules (default: the plugin's, else 1.0); for a plugin "
                                                              "that averages tied candidates (ensemble.json) it scales their whole sum, 1 being as trained"),
    strategy: str = typer.Option("greedy", help=_help(_G, "strategy")),
    max_new_tokens: int = typer.Option(64, help=_help(_G, "max_new_tokens")),
    min_new_tokens: int = typer.Option(0, help=_help(_G, "min_new_tokens")),
    temperature: float = typer.Option(1.0, help=_help(_G, "temperature")),
    top_p: float = typer.Option(1.0, help=_help(_G, "top_p")),
    num_beams: int = typer.Option(4, help=_help(_G, "num_beams")),
    repetition_penalty: float = typer.Option(1.1, help=_help(_G, "repetition_penalty")),
    repetition_scope: str = typer.Option("generated", help=_help(_G, "repetition_scope")),
    no_repeat_ngram_size: int = typer.Option(0, help=_help(_G, "no_repeat_ngram_size")),
    stop: list[str] = typer.Option([], help="stop string (repeatable; default: a blank line when the prompt holds "
                                                 "demonstrations, which is where their answers end)"),
    batch_size: int = typer.Option(8, help=_help(_G, "batch_size")),
    seed: int = typer.Option(0, help=_help(_G, "seed")),
) -> None:
    """Generate with a black box, adapted by a plugin when --plugin is given."""
    from .combine import get_rule
    from .data import encode_prompt, get_template, group_by_input
    from .decode import Decoder, GenerationConfig
    from .reweighter import TokenizerMismatchError
    from .train import load_plugin

    try:
        gcfg = GenerationConfig(
            strategy=strategy, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature, top_p=top_p,  # type: ignore[arg-type]
            num_beams=num_beams, repetition_penalty=repetition_penalty, repetition_scope=repetition_scope,  # type: ignore[arg-type]
            no_repeat_ngram_size=no_repeat_ngram_size, stop_strings=tuple(stop), batch_size=batch_size, seed=seed,
        )
        combination = None if rule is None else get_rule(rule)
    except ValueError as e:
        _fail(str(e))
    tmpl = None if template is None else get_template(template, chat=chat)
    if (task is None) == (input_file is None):
        _fail("give either --input-file or --task")
    if task is not None:
        splits = _task_splits(task, data_dir, seed)
        if split not in splits:
            _fail(f"--split must be one of {sorted(splits)}, got {split!r}")
        rows = group_by_input(splits[split])
    else:
        rows = _examples(input_file, input_column, None)  # type: ignore[arg-type]
    bb = _load_bb(blackbox, endpoint_model, tokenizer)
    rw = None
    if plugin is not None:
        try:  # the rule and prompt it was trained with (its EOS: this black box's)
            loaded = load_plugin(plugin, bb)
        except (FileNotFoundError, TokenizerMismatchError, ValueError) as e:
            _fail(str(e))
        rw, combination, tmpl = loaded.reweighter, combination or loaded.rule, tmpl or loaded.template
    if tmpl is None:
        tmpl = get_template(TASKS[task].template if task in TASKS else "plain", chat=chat)
    if tmpl.demos and not stop:
        gcfg.stop_strings = ("\n\n",)
    if alpha is not None and combination is not None:
        if not hasattr(combination, "alpha"):
            _fail(f"--alpha applies to product rules, not to {combination.name!r}")
        combination.alpha = float(alpha)
    if combination is None or (rw is None and combination.needs_reweighter):  # no plugin: the black box alone
        combination = get_rule("blackbox")
    decoder = Decoder(bb, rw, combination, gcfg)
    prompts = [encode_prompt(bb.tokenizer, tmpl, r.input) for r in rows]
    from .blackbox import BlackBoxUnavailable

    try:
        results = decoder.generate_ids(prompts, progress=True)
    except BlackBoxUnavailable as e:
        _fail(f"{e}\nAnswers received so far are cached; rerun the same command to continue.")
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for r, g in zip(rows, results):
            f.write(json.dumps({"input": r.input, "output": g.text, "finish_reason": g.finish_reason}) + "\n")
    typer.echo(f"wrote {len(results)} generations to {output}")


@app.command()
def quickstart(
    data_dir: Optional[Path] = typer.Option(None, help="data folder (default: $LOGITPLUG_DATA or ../shared/data)"),
    output_dir: Path = typer.Option(Path("runs/quickstart"), help="where the plugin and results go"),
    blackbox: str = typer.Option("smollm2-135m", help="black box to adapt"),
    train_rows: int = typer.Option(800, help="training rows taken from the paper's 60% train part"),
    eval_rows: int = typer.Option(200, help="early-stopping rows taken from the paper's 40% part"),
    test_inputs: int = typer.Option(200, help="distinct test inputs to generate for and score"),
    epochs: int = typer.Option(6, help="maximum epochs"),
    seed: int = typer.Option(0, help="seed for splits, initialization and data order"),
    recipe: str = typer.Option(DEFAULT_RECIPE, help=f"plugin recipe ({', '.join(RECIPES)}; see `train --help`)"),
) -> None:
    """The main job: adapt a black box to E2E NLG (cleaned) and compare with zero-shot (and with the
    recipe's prompt alone when it adds demonstrations)."""
    from .quickstart import run_quickstart

    try:
        run_quickstart(data_dir, output_dir, blackbox, train_rows, eval_rows, test_inputs, epochs, seed, recipe)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command("eval")
def eval_command(
    generations: Path = typer.Argument(..., help="JSONL with one generation per line (fields: input, output)"),
    task: str = typer.Option(..., help="task whose references to score against: e2e, e2e-original, webnlg, commongen, adidas"),
    split: str = typer.Option("test", help="split of the task: train, validation or test"),
    data_dir: Optional[Path] = typer.Option(None, help="data folder (default: $LOGITPLUG_DATA or ../shared/data)"),
    seed: int = typer.Option(0, help="seed of the task's split (must match the one used to generate)"),
    metrics: str = typer.Option("BLEU,NIST,METEOR,ROUGE-1,ROUGE-2,ROUGE-L,CIDEr", help="comma-separated metric names"),
    output_field: str = typer.Option("output", help="JSONL field holding the generated text"),
    output: Optional[Path] = typer.Option(None, help="write the scores as JSON here"),
) -> None:
    """Score generations against a task split's references (all references per input); E2E also
    gets the slot error rate."""
    from .data import group_by_input, load_task
    from .eval import evaluate, parse_mr, slot_error_rate

    rows = _examples(generations, "input", output_field)
    try:
        splits = load_task(task, data_dir, seed)
        if split not in splits:
            _fail(f"split must be one of {sorted(splits)}, got {split!r}")
        refs_by_input = {e.input: list(e.references) for e in group_by_input(splits[split])}
        unknown = [r.input for r in rows if r.input not in refs_by_input]
        if unknown:
            _fail(f"{len(unknown)} of {len(rows)} generations have inputs that are not in {task}/{split}, "
                  f"e.g. {unknown[0][:80]!r}")
        hyps = [r.target or "" for r in rows]
        scores = evaluate(hyps, [refs_by_input[r.input] for r in rows], [m.strip() for m in metrics.split(",") if m.strip()])
        if task.startswith("e2e"):
            names = sorted({v for ex in splits["train"] + splits["validation"] + splits["test"]
                            for k, v in parse_mr(ex.input).items() if k in ("name", "near")})
            scores["SER"] = slot_error_rate(hyps, [r.input for r in rows], names)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(f"{task}/{split}: {len(rows)} generations")
    typer.echo(f"{'metric':9s} {'score':>8s}  signature")
    for name, sc in scores.items():
        typer.echo(f"{name:9s} {sc.score:8.2f}  {sc.signature}")
    if output is not None:
        output.write_text(json.dumps({"task": task, "split": split, "seed": seed, "n": len(rows),
                                      "scores": {k: v.to_dict() for k, v in scores.items()}}, indent=2))
        typer.echo(f"wrote {output}")


@app.command()
def bench(
    config: Path = typer.Argument(..., help="bench config (YAML); examples in benchmarks/*.yaml"),
    output_dir: Optional[Path] = typer.Option(None, help="override the config's output_dir"),
    report_only: bool = typer.Option(False, "--report-only", help="only rebuild the table and plots from finished cells"),
    seeds: Optional[str] = typer.Option(None, help="run only these seeds now, e.g. '0' or '0,1' (a first pass)"),
    methods: Optional[str] = typer.Option(None, help="run only these methods now, comma-separated names from the config"),
    tasks: Optional[str] = typer.Option(None, help="run only these tasks now, comma-separated names from the config"),
    sizes: Optional[str] = typer.Option(None, help="run only these training sizes of a data-size sweep now, e.g. '3000'"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Run a grid of tasks x black boxes x methods x seeds; rerun to resume (finished cells are skipped).

    Writes one JSON per cell under OUTPUT_DIR/cells, then OUTPUT_DIR/results.{json,md} and a PNG per
    task and black box. Methods: zero-shot, icl-K, small, mixture-A, plugin, proxy-tuning[-A], lora,
    or a variant {name, method, train, reweighter, lora}.
    """
    import copy

    from .bench import BenchConfigError, load_config, run_bench
    from .train import TrainingInterrupted

    try:
        cfg = load_config(config)
        if output_dir is not None:
            cfg.output_dir = output_dir
        if seeds is not None:
            try:
                cfg.seeds = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                _fail(f"--seeds takes comma-separated integers, got {seeds!r}")
        whole = copy.copy(cfg)  # the table and plots cover the whole config, whatever runs now
        if methods is not None:
            wanted = [m.strip() for m in methods.split(",") if m.strip()]
            unknown = sorted(set(wanted) - {m.name for m in cfg.methods})
            if unknown:
                _fail(f"--methods: {unknown} are not in {config}; it has {[m.name for m in cfg.methods]}")
            cfg.methods = [m for m in cfg.methods if m.name in wanted]
        if tasks is not None:
            wanted = [t.strip() for t in tasks.split(",") if t.strip()]
            unknown = sorted(set(wanted) - set(cfg.tasks))
            if unknown:
                _fail(f"--tasks: {unknown} are not in {config}; it has {cfg.tasks}")
            cfg.tasks = [t for t in cfg.tasks if t in wanted]
        if sizes is not None:
            if not cfg.sweep:
                _fail(f"--sizes: {config} is not a data-size sweep (its data.train_rows is one number)")
            try:
                wanted_sizes = [int(n) for n in sizes.split(",") if n.strip()]
            except ValueError:
                _fail(f"--sizes takes comma-separated integers, got {sizes!r}")
            unknown = sorted(set(wanted_sizes) - set(cfg.sizes()))
            if unknown:
                _fail(f"--sizes: {unknown} are not in {config}; its data.train_rows is {cfg.sizes()}")
            cfg.run_sizes = wanted_sizes
        table = run_bench(cfg, progress=progress, only_report=report_only, report=whole)
    except typer.Exit:  # an error already reported above (click's Exit is a RuntimeError)
        raise
    except (BenchConfigError, FileNotFoundError, RuntimeError) as e:
        if isinstance(e, TrainingInterrupted):
            _fail(f"{e}\nFinished cells are kept; run the same bench command again to resume.")
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; finished cells are kept. Run the same bench command again to resume.")
    typer.echo(table.read_text())
    typer.echo(f"table: {table}")


@app.command()
def serve(
    blackbox: str = typer.Option("smollm2-135m", help="black box: a registered name, a transformers folder or a .gguf file"),
    plugin: Optional[Path] = typer.Option(None, help="serve the adapted model: black box + this trained plugin"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    model_name: Optional[str] = typer.Option(None, help="model id reported by /v1/models (default: the black box's name)"),
    api_key: Optional[str] = typer.Option(None, envvar="LOGITPLUG_API_KEY", help="require 'Authorization: Bearer KEY'"),
    max_prompt_tokens: int = typer.Option(2048, help="longest prompt accepted"),
    max_tokens: int = typer.Option(512, help="most new tokens per request"),
    max_logprobs: int = typer.Option(20, help="most log-probs per token a client may ask for (-1: whole vocabulary)"),
    repetition_penalty: float = typer.Option(1.0, help=_help(_G, "repetition_penalty")),
    demonstrations: bool = typer.Option(True, help="prepend the fixed demonstrations a plugin was trained under "
                                                   "(clients then send the task prompt alone)"),
) -> None:
    """Serve a black box (or black box + plugin) as an OpenAI-compatible endpoint with log-probs."""
    import uvicorn

    from .reweighter import TokenizerMismatchError
    from .serve import ServeConfig, create_app
    from .train import load_plugin

    bb = _load_bb(blackbox)
    rw, rule, prefix = None, None, {}
    if plugin is not None:
        try:
            loaded = load_plugin(plugin, bb)
        except (FileNotFoundError, TokenizerMismatchError, ValueError) as e:
            _fail(str(e))
        rw, rule, trained_on = loaded.reweighter, loaded.rule, loaded.template
        if trained_on.demos and demonstrations:
            # the plugin only helps on prompts shaped like its training: the server puts the
            # demonstrations in, clients send the task prompt alone
            prefix = {"prefix_messages": tuple(trained_on.demo_messages())} if trained_on.chat else \
                {"prompt_prefix": trained_on.demo_head()}
            shape = (f"chat messages ending with the user turn {replace(trained_on, demos=()).text!r}" if trained_on.chat
                     else repr(replace(trained_on, demos=()).render("INPUT")))
            typer.secho(f"note: this plugin was trained under {len(trained_on.demos)} fixed demonstration(s); the server "
                        f"prepends them to every {'conversation' if trained_on.chat else 'completion prompt'}. Send the "
                        f"task prompt alone, e.g. {shape}, and stop at a blank line (stop: [\"\\n\\n\"])",
                        fg=typer.colors.YELLOW, err=True)
        elif trained_on.demos:
            typer.secho(f"note: --no-demonstrations: send prompts that start with the plugin's {len(trained_on.demos)} "
                        f"demonstration(s) yourself, e.g. {trained_on.render('INPUT')!r}", fg=typer.colors.YELLOW, err=True)
    cfg = ServeConfig(model_name=model_name or (f"{blackbox}+plugin" if plugin else blackbox), api_key=api_key,
                      max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens, max_logprobs=max_logprobs,
                      repetition_penalty=repetition_penalty, **prefix)
    typer.echo(f"serving {cfg.model_name} on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)")
    uvicorn.run(create_app(bb, rw, rule, cfg), host=host, port=port, log_level="warning")


@app.command()
def env() -> None:
    """Print versions, devices and registered models (paste into bug reports)."""
    import platform

    import torch
    import transformers

    from . import __version__
    from .blackbox import REGISTRY, logitplug_home

    typer.echo(f"logitplug {__version__} | python {platform.python_version()} | torch {torch.__version__} | "
               f"transformers {transformers.__version__}")
    typer.echo(f"device: {'cuda ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'} "
               f"({torch.get_num_threads()} threads)")
    typer.echo(f"LOGITPLUG_HOME: {logitplug_home()}")
    for name, m in REGISTRY.items():
        ready = (logitplug_home() / "models" / name / "config.json").exists()
        typer.echo(f"  {name:14s} {'converted' if ready else 'not converted yet'} - {m.description}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    sys.exit(main())
