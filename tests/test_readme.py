"""The README's Python example runs as written, on the real black box (smaller data and one epoch)."""

import functools
import re
from pathlib import Path

import pytest

import logitplug
import logitplug.data

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_python_example_trains_loads_and_decodes(tmp_path, monkeypatch, capsys):
    block = next(b for b in python_blocks() if "load_plugin(" in b and "train(" in b)
    real_splits = logitplug.data.e2e_paper_splits

    def small_splits(*args, **kwargs):  # the same protocol, a slice of it, so one epoch takes seconds
        splits = real_splits(*args, **kwargs)
        return {"train": splits["train"][:48], "validation": splits["validation"][:16], "test": splits["test"][:2]}

    monkeypatch.setattr(logitplug.data, "e2e_paper_splits", small_splits)
    monkeypatch.setattr(logitplug, "TrainConfig", functools.partial(
        logitplug.TrainConfig, epochs=1, progress=False, checkpoint_every=0))
    monkeypatch.chdir(tmp_path)  # the example writes runs/e2e relative to where it runs
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.strip(), "the example prints the adapted output of a test input"
    assert (tmp_path / "runs" / "e2e" / "logitplug.json").exists()
    plugin = namespace["plugin"]
    assert plugin.rule.name.startswith("product") and plugin.template.name == "e2e"
