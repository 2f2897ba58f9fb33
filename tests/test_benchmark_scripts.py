"""benchmarks/standing.py and scoreboard_summary.py: BENCHMARKS.md's scoreboard and per-seed claims are
computed from the cells, never pasted, so what they compute is tested."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from logitplug.bench import load_config
from logitplug.bench.runner import cell_path, settings_key

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BEGIN = "<!-- standing: written by benchmarks/standing.py --into; do not edit by hand -->"
END = "<!-- standing end -->"


def _cell(key: str, bleu: float, rouge: float, train_s: float = 500.0) -> dict:
    return {"settings_key": key, "scores": {"BLEU": bleu, "ROUGE-L": rouge}, "wall_seconds": 100.0 + bleu,
            "info": {"seconds": {"train": train_s}}}


@pytest.fixture
def board(tmp_path):
    """A config with finished cells: plugin seeds 0-1 current and seed 2 stale, icl-3 seeds 0-2, one LoRA cell."""
    config = tmp_path / "board.yaml"
    config.write_text(yaml.safe_dump({
        "name": "board", "output_dir": str(tmp_path / "runs"), "tasks": ["commongen"], "blackboxes": ["smollm2-135m"],
        "methods": ["zero-shot", "icl-3", "plugin", "lora"], "seeds": [0, 1, 2],
        "data": {"train_rows": 8, "validation_rows": 4, "test_inputs": 3}, "metrics": ["BLEU", "ROUGE-L"]}))
    cfg = load_config(config)
    methods = {m.name: m for m in cfg.methods}
    cells = {("zero-shot", None): (5.0, 30.0), ("icl-3", 0): (10.0, 40.0), ("icl-3", 1): (12.0, 44.0),
             ("icl-3", 2): (14.0, 48.0), ("plugin", 0): (16.0, 41.0), ("plugin", 1): (20.0, 45.0),
             ("lora", 0): (30.0, 50.0)}
    for (name, seed), (bleu, rouge) in cells.items():
        path = cell_path(cfg, "commongen", "smollm2-135m", name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_cell(settings_key(cfg, methods[name], "commongen"), bleu, rouge,
                                         train_s=5.0 if (name, seed) == ("plugin", 1) else 500.0)))
    stale = cell_path(cfg, "commongen", "smollm2-135m", "plugin", 2)
    stale.write_text(json.dumps(_cell("made-with-other-settings", 90.0, 90.0)))
    return config


def _run(tmp_path, script, *args):
    """Run benchmarks/SCRIPT as its docstring says, from ``tmp_path`` (where it writes benchmarks/results)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_standing_writes_means_of_current_cells_between_the_markers(board, tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text(f"# Scores\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    done = _run(tmp_path, "standing.py", board, "--into", doc)
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert text.startswith("# Scores\n\nbefore\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    assert f"Cells: `logitplug bench {board}`" in text  # the command that made the cells, not only the tables
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # the stale seed-2 cell (BLEU 90) is left out: mean of 16 and 20, sample standard deviation 2.83
    assert rows["plugin (default recipe)"].startswith("| plugin (default recipe) | 0,1 | **18.00 ± 2.83** | 43.00 ± 2.83 |")
    assert "| icl-3 | 0,1,2 | 12.00 ± 2.00 | **44.00 ± 4.00** |" in rows["icl-3"]
    assert rows["zero-shot"].startswith("| zero-shot | — | 5.00 | 30.00 |")
    assert "**" not in rows["lora (white-box ceiling)"]  # the ceiling is never the bold best
    assert "†" in rows["plugin (default recipe)"]  # seed 1 recorded 5 s of training: a reused model
    data = json.loads((tmp_path / "benchmarks/results/standing.json").read_text())
    assert data[0]["plugin_leads_black_box_only"] == {"BLEU": True, "ROUGE-L": False}


def test_standing_refuses_a_file_without_markers_before_any_work(board, tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text("# Scores\n")
    done = _run(tmp_path, "standing.py", board, "--into", doc)
    assert done.returncode != 0 and "has no standing markers" in done.stderr
    assert doc.read_text() == "# Scores\n" and not (tmp_path / "benchmarks/results").exists()


def test_scoreboard_summary_pairs_seeds_and_states_the_gap_to_the_ceiling(board, tmp_path):
    done = _run(tmp_path, "scoreboard_summary.py", board)
    assert done.returncode == 0, done.stderr
    # named after the config (board.yaml), so summarising a second config never overwrites the first's
    assert not (tmp_path / "benchmarks/results/scoreboard-summary.json").exists()
    [row] = json.loads((tmp_path / "benchmarks/results/board-summary.json").read_text())
    assert (tmp_path / "benchmarks/results/board-summary.md").exists()
    assert row["plugin_seeds"] == [0, 1]  # the stale seed 2 is not compared
    # icl-3's seed 2 has no plugin partner; each plugin seed meets its own seed's demonstrations
    assert row["against"]["icl-3"]["BLEU"] == {"wins": 2, "compared": 2, "mean_difference": 7.0}
    assert row["against"]["icl-3"]["ROUGE-L"] == {"wins": 2, "compared": 2, "mean_difference": 1.0}
    assert row["against"]["zero-shot"]["BLEU"] == {"wins": 2, "compared": 2, "mean_difference": 13.0}  # unseeded: every seed
    assert row["ceiling"]["gap_percent"] == pytest.approx({"BLEU": 40.0, "ROUGE-L": 14.0})
