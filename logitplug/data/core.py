"""Task examples, prompt templates, and turning (prompt, target) pairs into training tensors.

Every method (zero-shot, plugin, baselines) renders prompts through the same ``PromptTemplate``
so that differences in results come from the method, not from the prompt.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

logger = logging.getLogger(__name__)

DATA_ENV = "LOGITPLUG_DATA"


class DataError(ValueError):
    """Input data that cannot be used as given (missing columns, empty, untokenizable)."""


@dataclass(frozen=True)
class Example:
    """One task input with its training target and, for evaluation, all its references."""

    input: str
    target: str | None = None
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptTemplate:
    """How an input becomes a prompt. ``{input}`` marks the input; ``chat`` wraps it in the
    tokenizer's chat template (instruct models). ``target_prefix`` joins prompt and target.
    ``demos`` are solved (input, target) pairs placed before every prompt: fixed in-context
    demonstrations that travel with the template (and so with a trained plugin)."""

    name: str
    text: str
    chat: bool = False
    target_prefix: str = " "
    demos: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if "{input}" not in self.text:
            raise ValueError(f"prompt template {self.name!r} must contain '{{input}}', got {self.text!r}")
        # lists (from JSON) -> tuples, so templates stay hashable and compare equal after a round trip
        object.__setattr__(self, "demos", tuple((str(i), str(t)) for i, t in self.demos))

    def render(self, input_text: str, tokenizer: Any = None) -> str:
        return self.render_with_demos(input_text, (), tokenizer)

    def render_with_demos(self, input_text: str, demos: Sequence["Example"], tokenizer: Any = None) -> str:
        """In-context learning: solved examples first (the template's own, then ``demos``), as
        earlier chat turns for chat templates."""
        shots = [(i, t) for i, t in self.demos] + [(d.input, d.target or "") for d in demos]
        if self.chat:
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"template {self.name!r} uses a chat template but the tokenizer has none")
            messages = self._shot_messages(shots)
            messages.append({"role": "user", "content": self.text.replace("{input}", input_text)})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._shot_text(shots) + self.text.replace("{input}", input_text)

    def _shot_text(self, shots: Sequence[tuple[str, str]]) -> str:
        return "".join(f"{self.text.replace('{input}', i)}{self.target_prefix}{t}\n\n" for i, t in shots)

    def _shot_messages(self, shots: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        messages = []
        for i, t in shots:
            messages += [{"role": "user", "content": self.text.replace("{input}", i)},
                         {"role": "assistant", "content": t}]
        return messages

    def demo_head(self) -> str:
        """The text the fixed demonstrations put before a plain (non-chat) prompt: what a server
        prepends so that clients can send ``render(input)`` alone."""
        if self.chat:
            raise ValueError(f"template {self.name!r} is a chat template: its demonstrations are chat turns "
                             "(see demo_messages)")
        return self._shot_text(self.demos)

    def demo_messages(self) -> list[dict[str, str]]:
        """The fixed demonstrations as earlier (user, assistant) chat turns."""
        return self._shot_messages(self.demos)

    def with_demonstrations(self, demos: Sequence["Example"]) -> "PromptTemplate":
        """This template with ``demos`` fixed at the head of every prompt (training and decoding)."""
        if any(not d.target for d in demos):
            raise ValueError("demonstrations need targets")
        added = tuple((d.input, d.target or "") for d in demos)
        return replace(self, name=f"{self.name}+{len(self.demos) + len(added)}shot", demos=self.demos + added)

    @property
    def prefix(self) -> str:
        return "" if self.chat else self.target_prefix


_E2E_INSTRUCTION = (
    "Please convert the following attributes into a coherent sentence. Do not provide an explanation.\n"
    "Attributes: {input}\nSentence:"
)

_WEBNLG_INSTRUCTION = (
    "Please convert the following RDF triples (subject | predicate | object) into a coherent sentence. "
    "Do not provide an explanation.\nTriples: {input}\nSentence:"
)
_COMMONGEN_INSTRUCTION = (
    "Please write one everyday sentence that uses all of the following concepts. "
    "Do not provide an explanation.\nConcepts: {input}\nSentence:"
)
_ADIDAS_INSTRUCTION = (
    "Please write a product description for the following product. Do not provide an explanation.\n"
    "Product: {input}\nDescription:"
)


def _with_chat(name: str, text: str) -> dict[str, PromptTemplate]:
    """A raw template and its chat-template twin (instruction without the trailing answer cue)."""
    return {name: PromptTemplate(name, text), f"{name}-chat": PromptTemplate(f"{name}-chat", text.rsplit("\n", 1)[0], chat=True)}


TEMPLATES: dict[str, PromptTemplate] = {
    **_with_chat("e2e", _E2E_INSTRUCTION),
    **_with_chat("webnlg", _WEBNLG_INSTRUCTION),
    **_with_chat("commongen", _COMMONGEN_INSTRUCTION),
    **_with_chat("adidas", _ADIDAS_INSTRUCTION),
    "plain": PromptTemplate("plain", "{input}"),
}


def get_template(name_or_text: str, chat: bool = False) -> PromptTemplate:
    """A template by registered name, or an ad-hoc one from text containing ``{input}``."""
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if "{input}" not in name_or_text:
        raise ValueError(
            f"unknown prompt template {name_or_text!r}: give one of {sorted(TEMPLATES)} or a text containing '{{input}}'"
        )
    return PromptTemplate("custom", name_or_text.replace("\\n", "\n"), chat=chat)


# ---- reading files ----------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv or .jsonl")


def load_table(path: str | Path, input_column: str = "input", target_column: str | None = "target") -> list[Example]:
    """Examples from a CSV/TSV/JSONL file with named input and (optional) target columns."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path} holds no rows")
    columns = set(rows[0])
    wanted = [input_column] + ([target_column] if target_column else [])
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has columns {sorted(columns)}")
    return [
        Example(str(r[input_column]), None if target_column is None else str(r[target_column] or ""))
        for r in rows
    ]


def group_by_input(examples: Iterable[Example]) -> list[Example]:
    """One example per distinct input, with every target of that input as its references."""
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for ex in examples:
        refs = groups.setdefault(ex.input, [])
        refs.extend(ex.references or ([ex.target] if ex.target else []))
    return [Example(inp, refs[0] if refs else None, tuple(refs)) for inp, refs in groups.items()]


def split_by_input(examples: Sequence[Example], fraction: float, seed: int, *,
                   same_target_together: bool = False) -> tuple[list[Example], list[Example]]:
    """Split rows so that all rows of one input land on the same side (no input leaks).

    ``same_target_together`` also keeps rows that share a target on one side, with every input
    they touch: where one text answers several inputs (a product sold in several colours), a
    random split by input puts the same answer on both sides, and a held-out set that can be
    answered by recall rewards memorizing over generalizing. ``fraction`` then counts groups.
    """
    if not same_target_together:
        inputs = list(OrderedDict.fromkeys(ex.input for ex in examples))
        random.Random(seed).shuffle(inputs)
        first = set(inputs[: round(len(inputs) * fraction)])
        return [ex for ex in examples if ex.input in first], [ex for ex in examples if ex.input not in first]
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for ex in examples:  # an input and its target belong together; shared ones join their groups
        parent[root(("input", ex.input))] = root(("target", ex.target))
    groups = list(OrderedDict.fromkeys(root(("input", ex.input)) for ex in examples))
    random.Random(seed).shuffle(groups)
    first = set(groups[: round(len(groups) * fraction)])
    return ([ex for ex in examples if root(("input", ex.input)) in first],
            [ex for ex in examples if root(("input", ex.input)) not in first])


def find_data_dir(explicit: str | Path | None = None) -> Path:
    """The data folder: ``explicit``, else $LOGITPLUG_DATA, else a ``shared/data`` beside the checkout."""
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    here = Path(__file__).resolve().parents[2]
    candidates += [Path.cwd() / "../shared/data", here / "../shared/data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise FileNotFoundError(
        "no data folder found: pass --data-dir, set LOGITPLUG_DATA, or place the files in ../shared/data "
        "(layout and public sources: see README.md, 'Data')"
    )


def draw_demonstrations(examples: Sequence[Example], k: int, seed: int,
                        pool: Sequence[Example] | None = None) -> tuple[list[Example], list[Example]]:
    """k solved examples drawn by ``seed`` (for in-context prompts) and the examples left for training.
    ``pool``: the rows to draw from, when not all of ``examples`` (a data-size sweep draws from its
    smallest size's rows, so every size gets the same demonstrations)."""
    pool = [ex for ex in (examples if pool is None else pool) if ex.target]
    if k > len(pool):
        raise ValueError(f"asked for {k} demonstrations but only {len(pool)} examples have targets")
    demos = random.Random(seed).sample(pool, k)
    return demos, [ex for ex in examples if ex not in demos]


# ---- tokenization -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + target + EOS; positions >= prompt_len are the trained targets."""

    input_ids: tuple[int, ...]
    prompt_len: int


def encode_prompt(tokenizer: Any, template: PromptTemplate, input_text: str, max_length: int | None = None) -> list[int]:
    """Prompt token ids; longer than ``max_length`` -> truncated from the left with a warning."""
    ids = tokenizer(template.render(input_text, tokenizer), add_special_tokens=True)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        logger.warning("prompt of %d tokens truncated from the left to %d (context limit)", len(ids), max_length)
        ids = ids[-max_length:]
    return list(ids)


def _encode_example(tokenizer: Any, template: PromptTemplate, example: Example, max_length: int) -> tuple[EncodedExample, int]:
    """The encoded example and how many prompt tokens were cut from the left to make it fit."""
    if example.target is None:
        raise DataError(f"example has no target: {example.input[:80]!r}")
    target = tokenizer(template.prefix + example.target, add_special_tokens=False)["input_ids"]
    if not example.target.strip() or not target:
        raise DataError(f"target tokenizes to nothing for input {example.input[:80]!r}")
    target = list(target) + [tokenizer.eos_token_id]
    if len(target) >= max_length:
        raise DataError(
            f"target of {len(target)} tokens does not fit the context of {max_length} tokens: {example.target[:80]!r}"
        )
    prompt = encode_prompt(tokenizer, template, example.input)
    room = max_length - len(target)
    cut = max(0, len(prompt) - room)
    prompt = prompt[cut:]
    return EncodedExample(tuple(prompt + target), len(prompt)), cut


def encode_example(tokenizer: Any, template: PromptTemplate, example: Example, max_length: int) -> EncodedExample:
    """Prompt and target tokenized separately (exactly as generation will see them), EOS appended;
    a prompt too long for ``max_length`` is cut from the left with a warning."""
    enc, cut = _encode_example(tokenizer, template, example, max_length)
    if cut:
        logger.warning("prompt of %d tokens truncated from the left to %d (context limit)", enc.prompt_len + cut,
                       enc.prompt_len)
    return enc


def encode_all(tokenizer: Any, template: PromptTemplate, examples: Sequence[Example], max_length: int) -> list[EncodedExample]:
    if not examples:
        raise DataError("no training examples given")
    out = []
    cut = 0
    for i, ex in enumerate(examples):
        try:
            enc, dropped = _encode_example(tokenizer, template, ex, max_length)
        except DataError as e:
            raise DataError(f"row {i}: {e}") from None
        cut += dropped > 0
        out.append(enc)
    if cut:
        # one line, not one per row: a long template (e.g. with demonstrations) cuts most rows at once
        logger.warning("%d of %d prompts truncated from the left to fit max_length=%d tokens (prompt + target); "
                       "raise max_length (train --max-length) if the cut part matters", cut, len(examples), max_length)
    return out


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors. ``target_mask`` (B, T) marks positions whose *next* token is a target.

    Masking by lengths, never by pad id: SmolLM2 pads with its EOS id, and masking by pad id
    would silently drop the appended EOS target.
    """
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        attention_mask[i, :n] = 1
        target_mask[i, e.prompt_len - 1 : n - 1] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "target_mask": target_mask}


def targets_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The next-token ids (N,) at the True entries of ``target_mask``, in row-major order."""
    nxt = torch.roll(batch["input_ids"], shifts=-1, dims=1)
    return nxt[batch["target_mask"]]
