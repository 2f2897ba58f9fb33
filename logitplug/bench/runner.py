"""``logitplug bench CONFIG.yaml``: a grid of tasks x black boxes x methods x seeds.

Each cell writes one JSON file when it finishes (atomically), so an interrupted run resumes by
skipping finished cells; a cell cut short inside training resumes from its checkpoint. The whole
config is checked before any work starts: an unknown task, black box, method or setting is an
error up front, not an hour in.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .._io import atomic_write_json
from ..blackbox import load_blackbox
from ..blackbox.registry import REGISTRY, split_topk
from ..data import TASKS, TEMPLATES, Example, find_data_dir, get_template, group_by_input, load_task
from ..decode import GenerationConfig
from ..eval import METRICS, evaluate, parse_mr, require_java, slot_error_rate
from ..finetune import LoraTrainConfig
from ..reweighter import ReweighterConfig
from ..train import TrainConfig
from ..recipes import DEFAULT_RECIPE
from .methods import CellContext, Method, make_method
from .report import write_report

CONFIG_KEYS = {"name", "output_dir", "tasks", "blackboxes", "methods", "seeds", "data", "generation", "train",
               "reweighter", "lora", "grid", "templates", "metrics", "recipe", "task_generation", "task_lora"}
DATA_KEYS = {"data_dir", "train_rows", "validation_rows", "validation_inputs", "test_inputs", "split_seed"}


class BenchConfigError(ValueError):
    """The bench config cannot be run as written."""


@dataclass
class BenchConfig:
    name: str
    output_dir: Path
    tasks: list[str]
    blackboxes: list[str]
    methods: list[Method]
    seeds: list[int]
    data: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    # per-task overrides of ``generation`` (Adidas descriptions need more tokens than E2E's)
    task_generation: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    reweighter: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    # per-task overrides of ``lora`` (the white-box ceiling on one task may need more epochs)
    task_lora: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"])
    source: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None  # shown in the table's command line
    run_sizes: list[int] | None = None  # a sweep's sizes to run now (CLI --sizes); all by default

    @property
    def sweep(self) -> bool:
        """Whether data.train_rows lists several sizes (a data-size sweep)."""
        return isinstance(self.data.get("train_rows"), list)

    def per_size(self, method: Method) -> bool:
        """Whether ``method`` runs once per training size (else one cell for all sizes)."""
        return method.uses_training_data and not (self.sweep and method.demonstrations_only)

    def generation_for(self, task: str | None) -> dict[str, Any]:
        """The decoding settings of ``task``: the shared ones with the task's overrides on top."""
        return {**self.generation, **self.task_generation.get(task or "", {})}

    def lora_for(self, task: str | None) -> dict[str, Any]:
        """The LoRA settings of ``task``: the shared ones with the task's overrides on top."""
        return {**self.lora, **self.task_lora.get(task or "", {})}

    def sizes(self) -> list[int | None]:
        rows = self.data.get("train_rows")
        return list(rows) if isinstance(rows, list) else [rows]


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise BenchConfigError(msg)


def _check_section(name: str, values: Any, cls: type, where: str) -> dict[str, Any]:
    _need(isinstance(values or {}, dict), f"{where}: '{name}' must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - known)
    _need(not unknown, f"{where}: unknown {name} setting(s) {unknown}; known: {sorted(known)}")
    return dict(values or {})


def _check_values(name: str, values: dict[str, Any], cls: type, where: str) -> None:
    """Refuse settings ``cls`` itself rejects (e.g. a rank of 0), naming the section."""
    try:
        cls(**values)
    except (TypeError, ValueError) as e:
        raise BenchConfigError(f"{where}: {name}: {e}") from None


def _per_task(name: str, raw: dict[str, Any], shared: dict[str, Any], cls: type, where: str) -> dict[str, dict[str, Any]]:
    """A ``task_X`` section: per-task overrides of the shared section, each checked on top of it."""
    _need(isinstance(raw.get(name) or {}, dict), f"{where}: '{name}' must map task names to settings")
    out = {}
    for task, values in (raw.get(name) or {}).items():
        _need(task in raw["tasks"], f"{where}: {name} given for task {task!r}, which is not in 'tasks'")
        out[task] = _check_section(f"{name}.{task}", values, cls, where)
        _check_values(f"{name}.{task}", {**shared, **out[task]}, cls, where)
    return out


def parse_config(raw: dict[str, Any], where: str = "config") -> BenchConfig:
    """Validate a bench config mapping completely; raise ``BenchConfigError`` naming the problem."""
    _need(isinstance(raw, dict), f"{where}: expected a mapping at the top level")
    unknown = sorted(set(raw) - CONFIG_KEYS)
    _need(not unknown, f"{where}: unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    for key in ("tasks", "blackboxes", "methods"):
        _need(isinstance(raw.get(key), list) and raw[key], f"{where}: '{key}' must be a non-empty list")
    bad_tasks = [t for t in raw["tasks"] if t not in TASKS]
    _need(not bad_tasks, f"{where}: unknown task(s) {bad_tasks}; known: {sorted(TASKS)}")
    for bb in raw["blackboxes"]:
        base = _split_topk(str(bb))[0]
        _need(base in REGISTRY or Path(base).expanduser().exists(),
              f"{where}: unknown black box {bb!r}: give a registered name ({', '.join(REGISTRY)}) or an existing path, "
              "optionally with @topK")
    labels = [blackbox_label(str(b)) for b in raw["blackboxes"]]
    _need(len(set(labels)) == len(labels), f"{where}: black boxes must have distinct names, got {labels}")
    methods = []
    for spec in raw["methods"]:
        try:
            methods.append(make_method(spec, default_recipe=str(raw.get("recipe") or DEFAULT_RECIPE)))
        except ValueError as e:
            raise BenchConfigError(f"{where}: {e}") from None
    names = [m.name for m in methods]
    _need(len(set(names)) == len(names), f"{where}: method names must be unique, got {names}")
    seeds = raw.get("seeds", [0])
    _need(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds),
          f"{where}: 'seeds' must be a non-empty list of integers")
    data = dict(raw.get("data") or {})
    _need(not (set(data) - DATA_KEYS), f"{where}: unknown data setting(s) {sorted(set(data) - DATA_KEYS)}; known: {sorted(DATA_KEYS)}")
    rows = data.get("train_rows")
    _need(rows is None or (isinstance(rows, int) and rows > 0)
          or (isinstance(rows, list) and rows and all(isinstance(n, int) and n > 0 for n in rows)),
          f"{where}: data.train_rows must be a positive integer, a list of them (a training-size sweep), or null")
    generation = _check_section("generation", raw.get("generation"), GenerationConfig, where)
    _check_values("generation", generation, GenerationConfig, where)
    task_generation = _per_task("task_generation", raw, generation, GenerationConfig, where)
    for key in ("validation_rows", "validation_inputs", "test_inputs"):
        _need(data.get(key) is None or (isinstance(data[key], int) and data[key] > 0),
              f"{where}: data.{key} must be a positive integer or null")
    _need(not (data.get("validation_rows") and data.get("validation_inputs")),
          f"{where}: give data.validation_rows or data.validation_inputs, not both")
    train = _check_section("train", raw.get("train"), TrainConfig, where)
    reweighter = _check_section("reweighter", raw.get("reweighter"), ReweighterConfig, where)
    lora = _check_section("lora", raw.get("lora"), LoraTrainConfig, where)
    _check_values("lora", lora, LoraTrainConfig, where)
    task_lora = _per_task("task_lora", raw, lora, LoraTrainConfig, where)
    grid = dict(raw.get("grid") or {})
    _check_section("grid", grid, TrainConfig, where)
    _need(all(isinstance(v, list) and v for v in grid.values()), f"{where}: every grid entry must be a non-empty list")
    templates = dict(raw.get("templates") or {})
    for task, tpl in templates.items():
        _need(task in raw["tasks"], f"{where}: template given for task {task!r}, which is not in 'tasks'")
        try:
            get_template(str(tpl))
        except ValueError as e:
            raise BenchConfigError(f"{where}: templates.{task}: {e}") from None
    for m in methods:
        for task in raw["tasks"]:
            base = str(templates.get(task, TASKS[task].template))
            if m.chat and base not in TEMPLATES and not base.endswith("-chat"):
                raise BenchConfigError(f"{where}: method {m.name!r} asks for chat prompts but task {task!r} uses "
                                       f"template {base!r}, which has no registered chat twin")
    metrics = raw.get("metrics") or ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    bad = [m for m in metrics if m not in METRICS]
    _need(not bad, f"{where}: unknown metric(s) {bad}; known: {list(METRICS)}")
    out = Path(raw.get("output_dir") or f"runs/bench/{raw.get('name', 'bench')}")  # relative: to the working dir
    return BenchConfig(
        name=str(raw.get("name", out.name)), output_dir=out, tasks=list(raw["tasks"]),
        blackboxes=[str(b) for b in raw["blackboxes"]], methods=methods, seeds=seeds, data=data,
        generation=generation, task_generation=task_generation, train=train, reweighter=reweighter, lora=lora,
        task_lora=task_lora, grid=grid, templates=templates,
        metrics=list(metrics), source=raw,
    )


def load_config(path: str | Path) -> BenchConfig:
    path = Path(path)
    if not path.exists():
        raise BenchConfigError(f"bench config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BenchConfigError(f"{path}: not valid YAML ({e})") from None
    cfg = parse_config(raw, where=str(path))
    cfg.config_path = str(path)
    return cfg


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-60:]


def _split_topk(name: str) -> tuple[str, str]:
    """(NAME, "@topK") or (name, ""): the suffix kept as text for labels."""
    base, top_k = split_topk(name)
    return base, "" if top_k is None else f"@top{top_k}"


def blackbox_label(name: str) -> str:
    """A registered name as is; a path by its last component (folder names in results stay short)."""
    base, suffix = _split_topk(name)
    return (base if base in REGISTRY else _slug(Path(base).expanduser().name)) + suffix


def cell_path(cfg: BenchConfig, task: str, blackbox: str, method: str, seed: int | None, size: int | None = None) -> Path:
    tail = "unseeded" if seed is None else f"seed{seed}"
    if cfg.sweep and size is not None:
        tail += f"-n{size}"
    return cfg.output_dir / "cells" / task / blackbox_label(blackbox) / _slug(method) / f"{tail}.json"


def settings_key(cfg: BenchConfig, method: Method, task: str | None = None) -> str:
    """What a cell's result depends on besides (task, black box, method name, seed): a finished
    cell made with other settings is stale and runs again."""
    from .methods import _key

    spec = next((m for m in cfg.source.get("methods", []) if (m if isinstance(m, str) else m.get("name")) == method.name),
                method.name)
    from .methods import LoraFineTune

    # the lora section concerns LoRA cells only: adding it to a config leaves the others' results standing
    lora = cfg.lora_for(task) if isinstance(method, LoraFineTune) else {}
    parts = [spec, cfg.data, cfg.generation_for(task), cfg.train, cfg.reweighter, lora, cfg.grid, cfg.templates, cfg.metrics]
    if task is not None and TASKS[task].splits_version != 1:  # the first version adds nothing: older cells stay current
        parts.append({"splits_version": TASKS[task].splits_version})
    recipe = method.recipe_settings()
    return _key(*parts, recipe) if recipe is not None else _key(*parts)


def _read_cell(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def current_cell(path: Path, key: str) -> dict[str, Any] | None:
    """A finished cell's record if it was made with the settings ``key`` stands for (see
    ``settings_key``); None for a missing, unreadable or stale cell, which a rerun would redo."""
    rec = _read_cell(path)
    return rec if rec is not None and rec.get("settings_key") == key else None


def _is_done(path: Path, key: str) -> bool:
    rec = _read_cell(path)
    if rec is not None and rec.get("settings_key") != key:
        print(f"{path}: made with other settings; it will run again")
    return rec is not None and rec.get("settings_key") == key


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    venue_names: list[str]
    # held-out rows for choices made by decoding text (TrainConfig.select_inputs may ask for more
    # inputs than the loss's validation holds): the validation rows first, then the rest of the
    # validation split in the same shuffled order
    choice_pool: list[Example] | None = None


def distinct_sizes(sizes: list[int | None], available: int) -> list[int | None]:
    """The sizes of a training-size sweep that give distinct training sets from a split of
    ``available`` rows: every size at or beyond it means the whole split, so only the first runs."""
    kept: list[int | None] = []
    for n in sizes:
        whole = n is None or n >= available
        if whole and any(k is None or k >= available for k in kept):
            continue
        kept.append(n)
    return kept


def task_sizes(cfg: BenchConfig, task: str) -> list[int | None]:
    """The config's training sizes for ``task``; in a sweep, sizes beyond the task's training split
    (CommonGen has 723 rows, so 1000 and 3000 are the same set) run once, as the smallest of them."""
    if not cfg.sweep:
        return cfg.sizes()
    available = len(_splits(cfg, task)["train"])
    kept = distinct_sizes(cfg.sizes(), available)
    dropped = [n for n in cfg.sizes() if n not in kept]
    if dropped:
        print(f"{task}: {available} training rows, so train_rows {dropped} would repeat a size at or beyond "
              f"{available}; skipped")
    return kept if cfg.run_sizes is None else [n for n in kept if n in cfg.run_sizes]


def demo_pool(cfg: BenchConfig, task: str, cache: dict[tuple[str, int | None], TaskData]) -> list[Example] | None:
    """In a data-size sweep, the smallest size's training rows (a subset of every size's): the rows
    demonstrations are drawn from, so every size gets the same prompt. None otherwise."""
    sizes = [n for n in cfg.sizes() if n is not None]
    if not cfg.sweep or not sizes:
        return None
    key = (task, min(sizes))
    if key not in cache:
        cache[key] = prepare_task(cfg, task, key[1])
    return cache[key].train


@functools.lru_cache(maxsize=4)
def _load_splits(task: str, data_dir: str, seed: int):
    return load_task(task, data_dir, seed=seed)


def _splits(cfg: BenchConfig, task: str):
    """The task's splits, parsed once per process (a sweep cuts them once per size; WebNLG parses
    XML). Keyed by the resolved data folder; callers only read them."""
    return _load_splits(task, str(find_data_dir(cfg.data.get("data_dir"))), int(cfg.data.get("split_seed", 0)))


def prepare_task(cfg: BenchConfig, task: str, train_rows: int | None = None) -> TaskData:
    """The task's splits, cut to the config's sizes: the same rows for every method and seed
    (the training rows of a smaller size are a subset of those of a larger one)."""
    import random

    splits = _splits(cfg, task)

    def shuffled(rows: list[Example], salt: int) -> list[Example]:
        rows = list(rows)
        random.Random(salt).shuffle(rows)
        return rows

    def cut(rows: list[Example], n: int | None, salt: int) -> list[Example]:
        return list(rows) if n is None or n >= len(rows) else shuffled(rows, salt)[:n]

    train = cut(splits["train"], train_rows, 1)
    if cfg.data.get("validation_inputs"):
        # whole inputs with all their references: a text metric on validation then sees every
        # reference, as on test (a cut by rows leaves multi-reference tasks 1-2 per input)
        grouped = group_by_input(splits["validation"])
        order, wanted = shuffled(grouped, 2), cfg.data["validation_inputs"]
        kept = grouped if wanted >= len(grouped) else order[:wanted]  # as cut(): all of it keeps the split's order
        rest = order[len(kept):]
        validation = [Example(ex.input, ref) for ex in kept for ref in ex.references]
        choice_pool = validation + [Example(ex.input, ref) for ex in rest for ref in ex.references]
    else:
        validation = cut(splits["validation"], cfg.data.get("validation_rows"), 2)
        choice_pool = validation
    test = group_by_input(splits["test"])
    n_test = cfg.data.get("test_inputs")
    test = test[:n_test] if n_test else test
    if not train or not validation or not test:
        raise BenchConfigError(f"task {task}: an empty split after cutting (train {len(train)}, "
                               f"validation {len(validation)}, test {len(test)})")
    names: list[str] = []
    if task.startswith("e2e"):
        names = sorted({v for ex in splits["train"] + splits["validation"] + splits["test"]
                        for k, v in parse_mr(ex.input).items() if k in ("name", "near")})
    return TaskData(train, validation, test, names, choice_pool)


def score(cfg: BenchConfig, task: str, data: TaskData, outputs: list[str]) -> dict[str, float]:
    refs = [list(ex.references) for ex in data.test]
    scores = {m: s.score for m, s in evaluate(outputs, refs, cfg.metrics).items()}
    if task.startswith("e2e"):
        scores["SER"] = slot_error_rate(outputs, [ex.input for ex in data.test], data.venue_names).score
    scores["empty"] = float(sum(1 for o in outputs if not o.strip()))
    return scores


def run_bench(cfg: BenchConfig, progress: bool = True, only_report: bool = False,
              report: BenchConfig | None = None) -> Path:
    """Run every unfinished cell, then write the table and plots (of ``report``, e.g. the whole
    config when ``cfg`` runs only some of its tasks or methods); returns the Markdown table's path."""
    if any(m in ("METEOR", "CIDEr") for m in cfg.metrics):
        require_java()  # fail now, not after the first cell's training
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    (cfg.output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.source, sort_keys=False))
    largest = max(cfg.sizes(), key=lambda n: float("inf") if n is None else n)
    sizes = {t: task_sizes(cfg, t) for t in cfg.tasks}
    cells = [(t, b, m, s if m.seeded else None, n if cfg.per_size(m) else largest)
             for t in cfg.tasks for b in cfg.blackboxes for m in cfg.methods
             for n in (sizes[t] if cfg.per_size(m) else [largest])
             for s in (cfg.seeds if m.seeded else [None])]
    todo = [c for c in cells
            if not _is_done(cell_path(cfg, c[0], c[1], c[2].name, c[3], c[4] if cfg.per_size(c[2]) else None),
                            settings_key(cfg, c[2], c[0]))]
    if only_report:
        todo = []
    print(f"bench {cfg.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run "
          f"-> {cfg.output_dir}")
    task_data: dict[tuple[str, int | None], TaskData] = {}
    blackboxes: dict[str, Any] = {}
    bar = tqdm(todo, desc="cells", disable=not progress, dynamic_ncols=True, position=0)
    for task, bb_name, method, seed, size in bar:
        shown = f" | n={size}" if cfg.sweep and cfg.per_size(method) else ""
        label = f"{task} | {blackbox_label(bb_name)} | {method.name} | seed {seed if seed is not None else '-'}{shown}"
        bar.set_description(label)
        path = cell_path(cfg, task, bb_name, method.name, seed, size if cfg.per_size(method) else None)
        if current_cell(path, settings_key(cfg, method, task)) is not None:  # e.g. by a second run on other --methods
            tqdm.write(f"{label}: finished meanwhile by another run; skipped")
            continue
        if (task, size) not in task_data:
            task_data[(task, size)] = prepare_task(cfg, task, size)
        if bb_name not in blackboxes:
            blackboxes.clear()  # one black box in memory at a time
            blackboxes[bb_name] = load_blackbox(bb_name)
        data, bb = task_data[(task, size)], blackboxes[bb_name]
        template = get_template(cfg.templates.get(task, TASKS[task].template))
        if method.chat and not template.chat:
            template = TEMPLATES[f"{template.name}-chat"]
        ctx = CellContext(
            blackbox=bb, task=task, train=data.train, validation=data.validation, test=data.test, template=template,
            seed=cfg.seeds[0] if seed is None else seed, generation=GenerationConfig(**cfg.generation_for(task)),
            models_dir=cfg.output_dir / "models" / task / blackbox_label(bb_name), train_overrides=cfg.train,
            reweighter_overrides=cfg.reweighter, lora_overrides=cfg.lora_for(task), grid=cfg.grid, progress=progress,
            demo_pool=demo_pool(cfg, task, task_data), choice_pool=data.choice_pool, blackbox_name=bb_name,
        )
        t0 = time.perf_counter()
        result = method.run(ctx)
        seconds = time.perf_counter() - t0
        record = {
            "task": task, "blackbox": blackbox_label(bb_name), "blackbox_path": bb_name, "blackbox_fingerprint": bb.fingerprint, "method": method.name,
            "seed": seed, "template": template.name, "train_rows": len(data.train),
            "validation_rows": len(data.validation), "test_inputs": len(data.test),
            "scores": score(cfg, task, data, result.outputs), "wall_seconds": seconds, "info": result.info,
            "settings_key": settings_key(cfg, method, task),
            "generations": [{"input": ex.input, "output": o} for ex, o in zip(data.test, result.outputs)],
        }
        record["sweep_size"] = size if cfg.sweep and cfg.per_size(method) else None
        atomic_write_json(path, record, indent=2, default=str)
        tqdm.write(f"{label}: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in record["scores"].items()) + f" ({seconds:.0f} s)")
    bar.close()
    return write_report(report or cfg)
