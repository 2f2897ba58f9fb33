"""The plugin: a small causal transformer whose logits reweight the black box token by token.

Built from transformers' ``LlamaConfig`` so KV caching, attention kernels and checkpoints come
from a well-kept library; everything specific to reweighting (vocabulary pinned to the black box,
zero-initialized head, the artifact format with its tokenizer check) lives here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights

from .. import _lm

logger = logging.getLogger(__name__)

CONFIG_NAME = "reweighter_config.json"
WEIGHTS_NAME = "model.safetensors"
SIDECAR_NAME = "logitplug.json"
README_NAME = "README.md"
EXTRA_PREFIX = "logitplug_"  # gate / copy-feature / unseen-token weights, beside the causal LM's own


class TokenizerMismatchError(ValueError):
    """A plugin or cache made for one tokenizer was offered to a black box with another."""


@dataclass
class ReweighterConfig:
    """Shape and initialization of the reweighter (defaults: the paper's 1-layer network)."""

    num_layers: int = field(default=1, metadata={"help": "transformer blocks (the paper uses 1)"})
    hidden_size: int = field(default=256, metadata={"help": "width of the residual stream"})
    num_heads: int = field(default=4, metadata={"help": "attention heads; must divide hidden_size"})
    intermediate_size: int = field(default=1024, metadata={"help": "feed-forward width"})
    max_positions: int = field(default=1024, metadata={"help": "longest sequence (prompt + response) in tokens"})
    tie_embeddings: bool = field(default=False, metadata={"help": "share input embedding and output head"})
    zero_init_head: bool = field(
        default=False, metadata={"help": "start with all-zero reweighting, i.e. exactly the black box"}
    )
    gate: bool = field(
        default=False,
        metadata={"help": "learn a per-position strength in (0, 2) that scales the reweighting (a CombLM-style "
                          "context gate; starts at 1, the paper's rule)"},
    )
    copy_feature: bool = field(
        default=False,
        metadata={"help": "add a learned, context-dependent bonus to every token of the prompt (an input-copy "
                          "feature: lets the reweighter keep names and values from the input; starts at 0)"},
    )
    neutral_unseen: bool = field(
        default=False,
        metadata={"help": "tokens that are a target for fewer than two distinct training inputs share one learned, "
                          "context-dependent logit instead of their own head row (fitted on the rare ones; starts "
                          "at 0). An experiment: the learned logit ends as low as the rows were (BENCHMARKS.md)"},
    )
    init_from: str | None = field(
        default=None, metadata={"help": "folder of a pretrained causal LM with the black box's tokenizer to start from"}
    )
    token_vectors_from: str | None = field(
        default=None,
        metadata={"help": "a pretrained causal LM with the black box's tokenizer (registered name or folder) whose token "
                          "embeddings, frozen, become the reweighter's input and output vectors: a token's reweighting then "
                          "follows its pretrained meaning, so tokens never seen in training are treated like similar ones "
                          "instead of all being demoted"},
    )
    vocab_size: int = field(default=0, metadata={"help": "set from the black box; never by hand"})

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ReweighterConfig.{name} must be a positive integer, got {value!r}")
        if self.init_from and self.token_vectors_from:
            raise ValueError("ReweighterConfig: give init_from or token_vectors_from, not both")
        if self.token_vectors_from and self.tie_embeddings:
            raise ValueError("ReweighterConfig: token_vectors_from already shares one frozen table between input and "
                             "output; tie_embeddings must be False")
        if self.init_from is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"ReweighterConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReweighterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown reweighter config keys (saved by a newer version?): %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


def _llama_config(cfg: ReweighterConfig, tokenizer: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=0.0,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
    )


class Reweighter(nn.Module):
    """Unnormalized reweighting logits z_r over the black box's vocabulary.

    ``forward`` returns logits (B, T, V), or (N, V) at the selected positions only: during
    training only response positions need the vocabulary head.
    """

    def __init__(self, config: ReweighterConfig, lm: nn.Module):
        super().__init__()
        self.config = config
        self.lm = lm
        self.gate: nn.Linear | None = None
        self.copy: nn.Linear | None = None
        self.unseen: UnseenTokens | None = None
        if config.gate:  # zero-initialized: strength exactly 1 at the start
            self.gate = nn.Linear(lm.config.hidden_size, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        if config.copy_feature:  # zero-initialized: no bonus at the start
            self.copy = nn.Linear(lm.config.hidden_size, 1)
            nn.init.zeros_(self.copy.weight)
            nn.init.zeros_(self.copy.bias)
        if config.neutral_unseen:
            self.unseen = UnseenTokens(config.vocab_size, lm.config.hidden_size)
        # the top-k decoding fast path gathers head rows without the prompt; the copy feature needs it
        self.supports_sparse = self.copy is None

    def _extras(self) -> dict[str, nn.Module]:
        return {name: m for name, m in (("gate", self.gate), ("copy", self.copy), ("unseen", self.unseen))
                if m is not None}

    @staticmethod
    def prompt_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor | None = None,
                      vocab_size: int | None = None) -> torch.Tensor:
        """(B, V) True for every token of each row's prompt: the tokens up to the row's first
        selected position (training), or all its tokens (decoding starts right after the prompt)."""
        keep = attention_mask.bool()
        if select is not None:
            first = select.float().argmax(-1, keepdim=True)
            keep = keep & (torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] <= first)
        counts = torch.zeros((input_ids.shape[0], int(vocab_size)), device=input_ids.device)
        return counts.scatter_add_(1, input_ids, keep.float()) > 0

    def _adjust(self, logits: torch.Tensor, hidden: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """Apply the optional unseen-token level, gate and copy bonus to head logits (..., V) from
        hidden states (..., H)."""
        if self.unseen is not None:
            logits = self.unseen.neutralize(logits, hidden)
        logits = logits.float() * self.strength(hidden)
        if self.copy is not None and prompt is not None:
            logits = logits + self.copy(hidden.to(self.copy.weight.dtype)).float() * prompt.float()
        return logits

    def strength(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-position reweighting strength (..., 1): 2 * sigmoid(gate(h)), or 1 without a gate."""
        if self.gate is None:
            return hidden.new_ones((*hidden.shape[:-1], 1))
        return 2.0 * torch.sigmoid(self.gate(hidden.to(self.gate.weight.dtype)))

    @classmethod
    def build(cls, config: ReweighterConfig, vocab_size: int, tokenizer: Any = None, seed: int = 0) -> "Reweighter":
        """A fresh reweighter for a black box with ``vocab_size`` outputs."""
        config.vocab_size = int(vocab_size)
        torch.manual_seed(seed)
        if config.init_from:
            lm = AutoModelForCausalLM.from_pretrained(config.init_from, dtype=torch.float32)
            got = lm.get_output_embeddings().weight.shape[0]
            if got != vocab_size:
                raise TokenizerMismatchError(
                    f"init_from model {config.init_from} has {got} output tokens but the black box has {vocab_size}; "
                    "it must use the black box's tokenizer"
                )
        else:
            lm = LlamaForCausalLM(_llama_config(config, tokenizer))
        if config.token_vectors_from:
            table = pretrained_token_vectors(config.token_vectors_from)
            if table.shape[0] != vocab_size:
                raise TokenizerMismatchError(
                    f"token_vectors_from model {config.token_vectors_from} has {table.shape[0]} tokens but the black box "
                    f"has {vocab_size}; it must use the black box's tokenizer"
                )
            use_token_vectors(lm, table)
        if config.zero_init_head:
            head = lm.get_output_embeddings()
            if config.tie_embeddings:
                raise ValueError("zero_init_head=True needs tie_embeddings=False (a zero head would zero the embeddings)")
            if isinstance(head, TokenVectorHead):
                nn.init.zeros_(head.proj.weight)
            else:
                nn.init.zeros_(head.weight)
                if getattr(head, "bias", None) is not None:
                    nn.init.zeros_(head.bias)
        return cls(config, lm)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reweighting logits at the ``select``ed positions (N, V), or (``rows``: (N, k) token ids
        per selected position) of those tokens only (N, k): training over a top-k support."""
        if rows is not None:
            if select is None:
                raise ValueError("rows (token ids per position) needs select (which positions)")
            return self.logits_for(_lm.hidden_states(self.lm, input_ids, attention_mask)[select], rows)
        if not self._extras():
            return _lm.selected_logits(self.lm, input_ids, attention_mask, select).float()
        hidden = _lm.hidden_states(self.lm, input_ids, attention_mask)
        prompt = None
        if self.copy is not None:
            prompt = self.prompt_tokens(input_ids, attention_mask, select, self.vocab_size)
        if select is not None:
            hidden = hidden[select]
            prompt = prompt[select.nonzero()[:, 0]] if prompt is not None else None
        elif prompt is not None:
            prompt = prompt[:, None, :]
        return self._adjust(_lm.head_logits(self.lm, hidden), hidden, prompt)

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if not self._extras():
            logits, state = _lm.prefill(self.lm, input_ids, attention_mask)
            return logits.float(), state
        hidden, state = _lm.prefill_hidden(self.lm, input_ids, attention_mask)
        prompt = None
        if self.copy is not None:
            prompt = self.prompt_tokens(input_ids, attention_mask, None, self.vocab_size)
            state = _PromptState(state, prompt)
        with torch.no_grad():
            return self._adjust(_lm.head_logits(self.lm, hidden), hidden, prompt), state

    def step(self, state: Any, next_tokens: torch.Tensor) -> torch.Tensor:
        if not self._extras():
            return _lm.step(self.lm, state, next_tokens).float()
        prompt = None
        if isinstance(state, _PromptState):
            state, prompt = state.inner, state.prompt
        hidden = _lm.step_hidden(self.lm, state, next_tokens)
        with torch.no_grad():
            return self._adjust(_lm.head_logits(self.lm, hidden), hidden, prompt)

    # Decoding over a top-k support needs only k rows of the head: these skip the other V - k.
    def start_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, _lm.StepState]:
        return _lm.prefill_hidden(self.lm, input_ids, attention_mask)

    def step_hidden(self, state: _lm.StepState, next_tokens: torch.Tensor) -> torch.Tensor:
        return _lm.step_hidden(self.lm, state, next_tokens)

    def logits_for(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Reweighting logits (B, k) of the tokens ``ids`` (B, k) from hidden states (B, H)."""
        if self.copy is not None:
            raise ValueError("the copy feature needs the prompt: decode with start/step, not logits_for")
        logits = _lm.head_rows(self.lm, hidden, ids).float()
        if self.unseen is not None:
            logits = self.unseen.neutralize(logits, hidden, ids=ids)
        return logits * self.strength(hidden)

    # ---- artifacts ---------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, blackbox_fingerprint: str, extra: dict[str, Any] | None = None) -> Path:
        """Write config, safetensors weights, a sidecar (black box + tokenizer hash) and a README card."""
        from .. import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["llm_config"] = self.lm.config.to_dict()
        vectors = self.lm.get_input_embeddings()
        if isinstance(vectors, TokenVectors):  # the table stays with its source; the hash pins which one
            cfg[TokenVectors.HASH_KEY] = vectors.fingerprint()
            if Path(self.config.token_vectors_from).is_dir():  # a folder: found again from any working directory
                cfg["token_vectors_from"] = str(Path(self.config.token_vectors_from).resolve())
        (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        state = {k: v.detach().contiguous().cpu() for k, v in self.lm.state_dict().items()}
        for name, module in self._extras().items():
            state.update({f"{EXTRA_PREFIX}{name}.{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()})
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        # a fresh file, never written through: the bench hard-links weights into derived plugin folders
        (path / WEIGHTS_NAME).unlink(missing_ok=True)
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        sidecar = {"blackbox": blackbox_fingerprint, "logitplug_version": __version__, **(extra or {})}
        (path / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str))
        (path / README_NAME).write_text(
            f"# logitplug reweighter\n\nA plugin for the black box `{blackbox_fingerprint}`.\n\n"
            f"- layers {self.config.num_layers}, hidden {self.config.hidden_size}, heads {self.config.num_heads}\n"
            f"- parameters {sum(p.numel() for p in self.parameters()):,}\n"
            f"- logitplug {__version__}\n\n"
            "Load with `logitplug.Reweighter.from_pretrained(path, blackbox=...)`.\n"
        )
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, blackbox_fingerprint: str | None = None,
                        token_vectors: str | None = None,
                        fallback_token_vectors: torch.Tensor | None = None) -> "Reweighter":
        """Load a saved plugin; refuse it when ``blackbox_fingerprint``'s tokenizer differs from the saved one.

        A plugin built on pretrained token vectors reads them again from where it was trained
        (``token_vectors_from``), or from ``token_vectors`` (a registered name or model folder) when
        that place is not at hand here; either way they must be the very table it was trained on.
        ``fallback_token_vectors`` (e.g. the black box's own input embeddings, already in memory)
        serves when the recorded place cannot be read and the table is the same."""
        path = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME, SIDECAR_NAME):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path} is not a logitplug plugin folder: {name} is missing")
        sidecar = read_sidecar(path)
        if blackbox_fingerprint is not None:
            check_same_tokenizer(sidecar["blackbox"], blackbox_fingerprint, what=f"plugin {path}")
        raw = json.loads((path / CONFIG_NAME).read_text())
        llm_dict = raw.pop("llm_config")
        table_hash = raw.pop(TokenVectors.HASH_KEY, None)
        # any architecture (init_from may be a Gemma, Qwen, ... checkpoint), rebuilt from its model_type
        llm_config = AutoConfig.for_model(llm_dict.pop("model_type", "llama"), **llm_dict)
        config = ReweighterConfig.from_dict({**raw, "init_from": None})
        config.init_from = raw.get("init_from")
        with no_init_weights():  # every weight comes from the file (checked below): random init would cost seconds
            lm = AutoModelForCausalLM.from_config(llm_config, dtype=torch.float32)
        state = load_file(str(path / WEIGHTS_NAME))
        if config.token_vectors_from:
            if TokenVectors.TABLE_KEY in state:  # earlier plugins carried the table in their weights file
                use_token_vectors(lm, state.pop(TokenVectors.TABLE_KEY))
            else:
                use_token_vectors(lm, _saved_token_vectors(path, config.token_vectors_from, token_vectors, table_hash,
                                                            fallback_token_vectors))
        extra_state: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in state.items():
            if k.startswith(EXTRA_PREFIX):
                name, _, param = k[len(EXTRA_PREFIX):].partition(".")
                extra_state.setdefault(name, {})[param] = v
        state = {k: v for k, v in state.items() if not k.startswith(EXTRA_PREFIX)}
        missing, unexpected = lm.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and llm_config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"plugin weights in {path} do not match its config: missing {missing}, unexpected {unexpected}")
        if llm_config.tie_word_embeddings:
            lm.tie_weights()
        model = cls(config, lm)
        extras = model._extras()
        if set(extras) != set(extra_state):
            raise ValueError(f"plugin weights in {path} do not match its config: it asks for {sorted(extras) or 'no'} "
                             f"extra modules (gate, copy, unseen) but holds weights for {sorted(extra_state) or 'none'}")
        for name, module in extras.items():
            module.load_state_dict(extra_state[name])
        return model


class TokenVectors(nn.Module):
    """Input embeddings made of frozen pretrained token vectors, projected to the reweighter's width.

    A from-scratch reweighter learns one input and one output vector per token from a few hundred
    rows, so every token missing from those rows keeps a vector training only pushed down: on WebNLG's
    unseen categories a third of the words to write are such tokens (BENCHMARKS.md). With a pretrained
    table, frozen, what the reweighter learns is a map in a space where related tokens already sit
    close: what it learns for seen tokens carries over to similar unseen ones (on CommonGen it halved
    the demotion of unseen tokens; on WebNLG it did not move it: BENCHMARKS.md)."""

    TABLE_KEY = "model.embed_tokens.table"  # where plugins saved before the table went by reference held it
    HASH_KEY = "token_vectors_sha256"

    def __init__(self, table: torch.Tensor, hidden_size: int):
        super().__init__()
        # not in the state dict: plugin folders and training checkpoints would carry the whole table
        # (113 MB for SmolLM2's vocabulary, 670 MB for Gemma's); it is read again from its source
        self.register_buffer("table", table.detach().float().contiguous(), persistent=False)
        self.proj = nn.Linear(table.shape[1], hidden_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[input_ids])

    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:  # the table is frozen: hashed once, not at every save
            self._fingerprint = table_fingerprint(self.table)
        return self._fingerprint


class TokenVectorHead(nn.Module):
    """Output head over the same frozen table: logit_t = proj(h) . table_t. Reads the table from the
    input side (one copy in memory and in the weights file)."""

    def __init__(self, vectors: TokenVectors, hidden_size: int):
        super().__init__()
        object.__setattr__(self, "_vectors", vectors)  # not a submodule: its table is saved once, by the input side
        self.proj = nn.Linear(hidden_size, vectors.table.shape[1], bias=False)

    @property
    def weight(self) -> torch.Tensor:  # (V, D): what code sizing the vocabulary from the head reads
        return self._vectors.table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)) @ self._vectors.table.T

    def rows(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, k) of the tokens ``ids`` (B, k) from hidden states (B, H)."""
        return torch.einsum("bd,bkd->bk", self.proj(hidden.to(self.proj.weight.dtype)), self._vectors.table[ids])


def pretrained_token_vectors(name_or_path: str) -> torch.Tensor:
    """The input-embedding table (V, D) of a pretrained causal LM: a registered black-box name or a folder."""
    from ..blackbox.registry import REGISTRY, model_folder, names_a_model

    if not names_a_model(name_or_path):
        raise FileNotFoundError(
            f"token_vectors_from: no model at {name_or_path!r}; give a registered black box name "
            f"({', '.join(sorted(REGISTRY))}) or a folder holding a causal LM (config.json and weights) with the "
            "black box's tokenizer"
        )
    folder = model_folder(name_or_path)
    table = _embedding_tensor(folder)
    if table is not None:
        return table
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except OSError as e:  # a tokenizer-only folder, or weights missing
        raise FileNotFoundError(f"token_vectors_from: {folder} holds no loadable model weights ({e})") from e
    return lm.get_input_embeddings().weight.detach().clone()


def _embedding_tensor(folder: Path) -> torch.Tensor | None:
    """The input-embedding table read alone from a model folder's safetensors (a plugin loads in a
    second instead of building the whole model: 10 s for Gemma-3), or None to load the model."""
    from safetensors import safe_open

    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):  # the parameter's name, without allocating the model
            skeleton = AutoModelForCausalLM.from_config(config)
        embeddings = skeleton.get_input_embeddings().weight
        name = next(n for n, p in skeleton.named_parameters() if p is embeddings)
        files = [folder / "model.safetensors"]
        index = folder / "model.safetensors.index.json"
        if index.exists():
            files = [folder / json.loads(index.read_text())["weight_map"][name]]
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                if name in f.keys():
                    table = f.get_tensor(name).to(torch.float32)
                    return table if tuple(table.shape) == tuple(embeddings.shape) else None
    except Exception:  # noqa: BLE001 -- any surprise (other layouts, prefixes): load the whole model instead
        return None
    return None


def table_fingerprint(table: torch.Tensor) -> str:
    """sha256 of a token-vector table's float32 values (shape included)."""
    values = table.detach().to(torch.float32).contiguous().cpu()
    digest = hashlib.sha256(repr(tuple(values.shape)).encode())
    digest.update(values.numpy().data)  # the buffer itself: tobytes() would copy 670 MB for Gemma's table
    return digest.hexdigest()


def _saved_token_vectors(path: Path, source: str, override: str | None, expected: str | None,
                         fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The table a saved plugin was trained on, read from ``override`` or its recorded source, else
    ``fallback`` if it is that same table."""
    where = override or source
    try:
        table = pretrained_token_vectors(where)
    except FileNotFoundError as e:
        if override is None and fallback is not None and expected is not None and table_fingerprint(fallback) == expected:
            logger.info("plugin %s: %r not found; using the given token vectors, the same table", path, source)
            return fallback.detach()
        raise FileNotFoundError(
            f"plugin {path} reweights through the frozen token vectors of {source!r}, which it does not store; "
            f"they could not be read here ({e}). Give the model they came from (for Python: "
            "Reweighter.from_pretrained(path, token_vectors=NAME_OR_FOLDER))"
        ) from e
    if expected is not None and table_fingerprint(table) != expected:
        raise TokenizerMismatchError(
            f"plugin {path} was trained on the token vectors of {source!r}, but those read from {where!r} differ "
            f"(sha256 {table_fingerprint(table)[:12]}..., expected {expected[:12]}...); give the same model it was "
            "trained with"
        )
    return table


def use_token_vectors(lm: nn.Module, table: torch.Tensor) -> None:
    """Give ``lm`` input embeddings and an output head built on the frozen ``table`` (see TokenVectors)."""
    vectors = TokenVectors(table, lm.config.hidden_size)
    lm.set_input_embeddings(vectors)
    lm.set_output_embeddings(TokenVectorHead(vectors, lm.config.hidden_size))


class UnseenTokens(nn.Module):
    """Which tokens the reweighter has evidence about, and its one logit for the others.

    A from-scratch reweighter learns token by token. A token never a target in its training rows
    keeps a head row that training only pushed down (as a wrong candidate) or never touched, so the
    plugin demotes it: on WebNLG's unseen categories a third of the held-out target tokens are such
    tokens, and there the plugin's loss is worse than the black box's (benchmarks/results/unseen-tokens.md).
    Here every token that is a target for fewer than ``EVIDENCE_INPUTS`` distinct training inputs
    shares one logit, ``level(h)``: learned on the rare ones (a target for a single input), the
    nearest thing in the training rows to a token never seen, and the same set in training and use.
    Measured, it does not help: in the training rows a rare token is rarely the answer, so the level
    learns to demote them too (BENCHMARKS.md, "Tokens the plugin never had as targets").
    """

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.register_buffer("seen", torch.zeros(int(vocab_size), dtype=torch.bool))
        self.level = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.level.weight)
        nn.init.zeros_(self.level.bias)

    def neutralize(self, logits: torch.Tensor, hidden: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` (..., V), or (..., k) of the tokens ``ids``, with every token outside ``seen`` at ``level(h)``."""
        known = self.seen if ids is None else self.seen[ids]
        level = self.level(hidden.to(self.level.weight.dtype)).float()
        return torch.where(known, logits.float(), level)


EVIDENCE_INPUTS = 2


def token_evidence(targets: list[list[int]], inputs: list[str], vocab_size: int,
                   min_inputs: int = EVIDENCE_INPUTS) -> torch.Tensor:
    """(V,) True for the tokens that are a target for at least ``min_inputs`` distinct ``inputs``
    (the references of one input count once: they share its names)."""
    per_input: dict[str, set[int]] = {}
    for key, ids in zip(inputs, targets):
        per_input.setdefault(key, set()).update(ids)
    counts = torch.zeros(int(vocab_size), dtype=torch.long)
    for ids in per_input.values():
        if ids:
            counts[torch.tensor(sorted(ids))] += 1
    return counts >= min_inputs


@dataclass
class _PromptState:
    """Decoding state of a reweighter with the copy feature: the LM's cache plus each row's prompt tokens."""

    inner: _lm.StepState
    prompt: torch.Tensor  # (B, V) bool

    def reorder(self, index: torch.Tensor) -> None:
        self.inner.reorder(index)
        self.prompt = self.prompt.index_select(0, index)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / SIDECAR_NAME).read_text())


def check_same_tokenizer(saved: str, current: str, what: str) -> None:
    """Refuse an artifact whose black-box tokenizer hash differs from the current black box's."""
    saved_tok, current_tok = saved.rsplit("|tok:", 1)[-1], current.rsplit("|tok:", 1)[-1]
    if saved_tok != current_tok:
        raise TokenizerMismatchError(
            f"{what} was made for black box '{saved}' but the black box given is '{current}': "
            "their tokenizers differ, so token ids would mean different things. Train a new plugin for this black box."
        )
    if saved != current:
        logger.warning("%s was trained with black box %s; using it with %s (same tokenizer)", what, saved, current)
