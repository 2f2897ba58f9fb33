"""The paper's four tasks, each split by its protocol (see ../shared/DESIGN.md), from local files.

Every loader returns ``{"train", "validation", "test"}``: train and validation hold one Example per
(input, reference) row, for training and early stopping; test holds one Example per distinct
input with *all* its references, for evaluation. Splits are by input (no input is on two sides)
and reproducible from a seed.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .core import Example, find_data_dir, group_by_input, load_table, split_by_input

Splits = dict[str, list[Example]]


def _require(path: Path, origin: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"data file missing: {path}. It comes from {origin} (see README.md, 'Data').")
    return path


# ---- E2E ------------------------------------------------------------------------------------

E2E_FILES = {
    "cleaned": ("e2e_cleaned", {"train": "train-fixed.no-ol.csv", "validation": "devel-fixed.no-ol.csv",
                                "test": "test-fixed.csv"}, "github.com/tuetschek/e2e-cleaning, cleaned-data/"),
    "original": ("e2e", {"train": "trainset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"},
                 "github.com/tuetschek/e2e-dataset (official E2E NLG Challenge release)"),
}


def load_e2e(split: str, data_dir: str | Path | None = None, variant: str = "cleaned") -> list[Example]:
    """E2E NLG rows (MR, reference); ``variant`` is ``cleaned`` (Dušek et al. 2019, the paper's) or ``original``."""
    if variant not in E2E_FILES:
        raise ValueError(f"E2E variant must be one of {sorted(E2E_FILES)}, got {variant!r}")
    folder, files, origin = E2E_FILES[variant]
    if split not in files:
        raise ValueError(f"E2E split must be one of {sorted(files)}, got {split!r}")
    return load_table(_require(find_data_dir(data_dir) / folder / files[split], origin), "mr", "ref")


def load_e2e_cleaned(split: str, data_dir: str | Path | None = None) -> list[Example]:
    return load_e2e(split, data_dir, "cleaned")


def e2e_paper_splits(data_dir: str | Path | None = None, seed: int = 0, variant: str = "cleaned") -> Splits:
    """Train on 60% of the validation split's inputs, early-stop on the other 40%, test on the test split."""
    train, early_stop = split_by_input(load_e2e("validation", data_dir, variant), 0.6, seed)
    return {"train": train, "validation": early_stop, "test": group_by_input(load_e2e("test", data_dir, variant))}


# ---- WebNLG 2017 ----------------------------------------------------------------------------

WEBNLG_ROOT = Path("webnlg/2017_challenge/webnlg_challenge_2017")
WEBNLG_ORIGIN = "gitlab.com/shimorina/webnlg-dataset, webnlg_challenge_2017/"
WEBNLG_TRAIN_CATEGORIES = ("Airport", "Building", "University", "Monument", "MeanOfTransportation")
WEBNLG_EVAL_CATEGORIES = ("Artist", "Politician", "Athlete", "ComicsCharacter", "Astronaut", "SportsTeam")


@dataclass(frozen=True)
class WebNLGEntry:
    category: str
    triples: tuple[str, ...]  # "subject | predicate | object", the modified (cleaned) triples
    lexicalizations: tuple[str, ...]

    @property
    def input(self) -> str:
        return " ; ".join(t.replace("_", " ") for t in self.triples)


def load_webnlg_entries(split: str, data_dir: str | Path | None = None) -> list[WebNLGEntry]:
    """All entries of one split: ``train``, ``dev`` (folders of XML files) or ``test`` (testdata_with_lex.xml)."""
    root = find_data_dir(data_dir) / WEBNLG_ROOT
    if split == "test":
        files = [_require(root / "test" / "testdata_with_lex.xml", WEBNLG_ORIGIN)]
    elif split in ("train", "dev"):
        files = sorted(_require(root / split, WEBNLG_ORIGIN).glob("*triples/*.xml"))
        if not files:
            raise FileNotFoundError(f"no WebNLG XML files under {root / split}; they come from {WEBNLG_ORIGIN}")
    else:
        raise ValueError(f"WebNLG split must be 'train', 'dev' or 'test', got {split!r}")
    entries = []
    for f in files:
        for e in ET.parse(f).getroot().iter("entry"):
            triples = tuple(" ".join(t.text.split()) for t in e.iter("mtriple"))
            lex = tuple(" ".join(x.text.split()) for x in e.iter("lex") if x.text and x.text.strip())
            entries.append(WebNLGEntry(e.get("category", ""), triples, lex))
    return entries


def webnlg_paper_splits(data_dir: str | Path | None = None, seed: int = 0) -> Splits:
    """Train on the train split's entries of five categories; validate and test on six *other*
    categories taken from dev + test pooled, halved by input. (MeanOfTransportation has no train-split
    entries in WebNLG 2017, so four categories contribute in practice.)"""
    train = [Example(e.input, lex) for e in load_webnlg_entries("train", data_dir)
             if e.category in WEBNLG_TRAIN_CATEGORIES for lex in e.lexicalizations]
    pooled = [Example(e.input, lex) for split in ("dev", "test") for e in load_webnlg_entries(split, data_dir)
              if e.category in WEBNLG_EVAL_CATEGORIES for lex in e.lexicalizations]
    validation, test = split_by_input(pooled, 0.5, seed)
    return {"train": train, "validation": validation, "test": group_by_input(test)}


# ---- CommonGen v1.0 -------------------------------------------------------------------------

COMMONGEN_ROOT = Path("commongen/v1.0_ink-usc_f5a4d01")
COMMONGEN_ORIGIN = "github.com/INK-USC/CommonGen, dataset/final_data (v1.0)"


def _concepts(concept_set: str) -> list[str]:
    return [c.split("_")[0] for c in concept_set.split("#")]


def load_commongen(split: str, data_dir: str | Path | None = None) -> list[Example]:
    """CommonGen v1.0: train as (concepts, sentence) rows from the txt files; dev/test from jsonl,
    one Example per concept set with all its scenes as references. Input: concepts joined by ', '."""
    root = find_data_dir(data_dir) / COMMONGEN_ROOT
    if split == "train":
        src = _require(root / "commongen.train.src_alpha.txt", COMMONGEN_ORIGIN).read_text(encoding="utf-8").splitlines()
        tgt = _require(root / "commongen.train.tgt.txt", COMMONGEN_ORIGIN).read_text(encoding="utf-8").splitlines()
        if len(src) != len(tgt):
            raise ValueError(f"CommonGen train files disagree: {len(src)} sources vs {len(tgt)} targets")
        return [Example(", ".join(s.split()), t.strip()) for s, t in zip(src, tgt)]
    if split not in ("dev", "test"):
        raise ValueError(f"CommonGen split must be 'train', 'dev' or 'test', got {split!r}")
    out = []
    with _require(root / f"commongen.{split}.jsonl", COMMONGEN_ORIGIN).open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            scenes = tuple(" ".join(s.split()) for s in row["scene"])
            out.append(Example(", ".join(_concepts(row["concept_set"])), scenes[0], scenes))
    return out


_MAN = re.compile(r"\bman\b", re.IGNORECASE)


def commongen_paper_splits(data_dir: str | Path | None = None, seed: int = 0) -> Splits:
    """Train on train rows whose target contains the word "man"; evaluate on dev concept sets
    without "man"/"woman", halved by concept set into validation and test."""
    train = [ex for ex in load_commongen("train", data_dir) if ex.target and _MAN.search(ex.target)]
    dev = [ex for ex in load_commongen("dev", data_dir) if not {"man", "woman"} & set(ex.input.split(", "))]
    rows = [Example(ex.input, ref) for ex in dev for ref in ex.references]
    validation, test = split_by_input(rows, 0.5, seed)
    return {"train": train, "validation": validation, "test": group_by_input(test)}


# ---- Adidas ---------------------------------------------------------------------------------

ADIDAS_FILE = Path("adidas/adidas_usa.csv")
ADIDAS_ORIGIN = "the Kaggle 'Adidas USA retail' scrape (crawlfeeds, 2021), adidas_usa.csv"


def load_adidas(data_dir: str | Path | None = None) -> list[Example]:
    """Rows in file order. Input: name, category, price, color (the paper's fields); target: description."""
    path = _require(find_data_dir(data_dir) / ADIDAS_FILE, ADIDAS_ORIGIN)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"name", "category", "selling_price", "color", "description"}
    if rows and not needed <= set(rows[0]):
        raise ValueError(f"{path}: missing column(s) {sorted(needed - set(rows[0]))}")
    return [
        Example(f"name: {r['name']} | category: {r['category']} | price: ${r['selling_price']} | color: {r['color']}",
                " ".join(r["description"].split()))
        for r in rows
    ]


def adidas_paper_splits(data_dir: str | Path | None = None, seed: int = 0) -> Splits:
    """The last 100 rows are the test set; the rest is split 80/20 into train and validation, rows
    that share a description on one side: a third of the descriptions answer several rows (one
    product in several colours), and split by input alone half the validation descriptions were
    training's word for word (against a tenth of the test's), so choices made on it favoured recall."""
    rows = load_adidas(data_dir)
    train, validation = split_by_input(rows[:-100], 0.8, seed, same_target_together=True)
    return {"train": train, "validation": validation, "test": group_by_input(rows[-100:])}


# ---- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    name: str
    splits: Callable[..., Splits]
    template: str  # name in TEMPLATES
    # raised whenever the splits a seed gives change, so that results made on the old ones read as stale
    splits_version: int = 1


TASKS: dict[str, Task] = {
    "e2e": Task("e2e", e2e_paper_splits, "e2e"),
    "e2e-original": Task("e2e-original", lambda d=None, seed=0: e2e_paper_splits(d, seed, "original"), "e2e"),
    "webnlg": Task("webnlg", webnlg_paper_splits, "webnlg"),
    "commongen": Task("commongen", commongen_paper_splits, "commongen"),
    "adidas": Task("adidas", adidas_paper_splits, "adidas", splits_version=2),  # 2: descriptions kept on one side
}


def load_task(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Splits:
    """A task's train / validation / test splits by name (see ``TASKS``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name].splits(data_dir, seed=seed)
