"""LoRA fine-tuning of the black box itself: the white-box ceiling the plugin is measured against.

Only possible when the weights are at hand (a local model); a closed model cannot be tuned this
way, which is the whole point of the plugin. Same data, same prompt template, same loss (response
tokens + EOS) and the same early stopping on held-out loss as ``logitplug.train``, so the gap
between the two measures the method, not the setup. The merged model is returned as a
``LocalBlackBox`` and decodes through the same ``Decoder``.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import _lm
from .blackbox import LocalBlackBox
from .data import Example, PromptTemplate, collate, encode_all, targets_of

ADAPTER_DIR = "adapter"
DONE_NAME = "finetune.json"
CHECKPOINT_NAME = "checkpoint.pt"  # after every epoch, so an interrupted run resumes there


@dataclass
class LoraTrainConfig:
    """LoRA settings (PEFT's usual ones) and the optimization loop's."""

    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA path"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "module names that get adapters"},
    )
    epochs: int = field(default=5, metadata={"help": "maximum epochs (early stopping on held-out loss)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per optimizer step"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    patience: int = field(default=2, metadata={"help": "epochs without held-out improvement before stopping"})
    max_length: int = field(default=256, metadata={"help": "longest prompt+target in tokens"})
    seed: int = field(default=0, metadata={"help": "seed for adapters and data order"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        for name in ("rank", "epochs", "batch_size", "max_length", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoraTrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"LoraTrainConfig.lr must be > 0, got {self.lr!r}")


def _identity(cfg: LoraTrainConfig) -> dict:
    """The settings a checkpoint must share with the run resuming it (the progress bar need not)."""
    return {k: v for k, v in asdict(cfg).items() if k != "progress"}


def _mean_nll(model, encoded, batch_size: int, device) -> float:
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[i : i + batch_size], pad_id=0).items()}
            logits = _lm.selected_logits(model, batch["input_ids"], batch["attention_mask"], batch["target_mask"])
            total += float(torch.nn.functional.cross_entropy(logits.float(), targets_of(batch), reduction="sum"))
            count += int(batch["target_mask"].sum())
    model.train()
    return total / max(count, 1)


def finetune_lora(
    blackbox: LocalBlackBox,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    template: PromptTemplate,
    output_dir: str | Path,
    config: LoraTrainConfig | None = None,
) -> LocalBlackBox:
    """Train LoRA adapters on a copy of the black box's model; return the merged, tuned model.

    The best adapters (by held-out loss) are saved in ``output_dir/adapter``; a finished run found
    there is loaded instead of retrained, an interrupted one resumes after its last finished epoch.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    if not isinstance(blackbox, LocalBlackBox):
        raise TypeError("LoRA fine-tuning needs the black box's weights: only a local model can be fine-tuned")
    if not eval_examples:
        raise ValueError("early stopping needs held-out examples; got none")
    cfg = config or LoraTrainConfig()
    out = Path(output_dir)
    device = blackbox.device
    base = copy.deepcopy(blackbox.model)
    for p in base.parameters():  # train in fp32 (a GGUF-converted model refuses `.float()`)
        if p.dtype != torch.float32:
            p.data = p.data.float()
    identity = f"{blackbox.identity}+lora"

    if (out / DONE_NAME).exists():
        tuned = PeftModel.from_pretrained(base, str(out / ADAPTER_DIR)).merge_and_unload()
        return LocalBlackBox(tuned, blackbox.tokenizer, identity, device)

    torch.manual_seed(cfg.seed)
    limit = min(cfg.max_length, blackbox.max_context)
    train_enc = encode_all(blackbox.tokenizer, template, train_examples, limit)
    eval_enc = encode_all(blackbox.tokenizer, template, eval_examples, limit)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    inner = model.get_base_model()  # the causal LM with adapters injected in place
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)

    best, bad, history, start = math.inf, 0, [], 0
    best_state: dict[str, torch.Tensor] = {}
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists():  # an interrupted run: continue after its last finished epoch
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != _identity(cfg) or state["blackbox"] != blackbox.fingerprint:
            raise ValueError(f"{ckpt} was written by a LoRA run with other settings or another black box; "
                             "delete it or choose another output folder")
        model.load_state_dict(state["lora"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        best, bad, history, best_state = state["best"], state["bad"], state["history"], state["best_state"]
        start = len(history)
        if cfg.progress:
            print(f"LoRA: resuming after epoch {start} from {ckpt}")
    model.train()
    for epoch in range(start, cfg.epochs):
        if bad >= cfg.patience:
            break
        order = list(range(len(train_enc)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"LoRA epoch {epoch + 1}", disable=not cfg.progress,
                   dynamic_ncols=True)
        t0, loss_avg = time.perf_counter(), None
        for i in bar:
            batch = {k: v.to(device) for k, v in collate([train_enc[j] for j in order[i : i + cfg.batch_size]], 0).items()}
            logits = _lm.selected_logits(inner, batch["input_ids"], batch["attention_mask"], batch["target_mask"])
            loss = torch.nn.functional.cross_entropy(logits.float(), targets_of(batch))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
            bar.set_postfix(loss=f"{loss_avg:.3f}")
        eval_loss = _mean_nll(inner, eval_enc, cfg.batch_size, device)
        history.append({"epoch": epoch + 1, "eval_loss": eval_loss, "train_loss": loss_avg,
                        "epoch_seconds": time.perf_counter() - t0})
        if cfg.progress:
            print(f"LoRA epoch {epoch + 1}: held-out loss {eval_loss:.4f}")
        if eval_loss < best - 1e-4:
            best, bad = eval_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
        else:
            bad += 1
        out.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"config": _identity(cfg), "blackbox": blackbox.fingerprint, "history": history, "best": best,
                    "bad": bad, "best_state": best_state, "rng": torch.get_rng_state(),
                    "lora": {k: v for k, v in model.state_dict().items() if "lora_" in k},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp)
        tmp.replace(ckpt)  # a crash mid-write leaves the previous checkpoint whole
        if bad >= cfg.patience:
            break
    model.load_state_dict(best_state, strict=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / ADAPTER_DIR))
    cfg_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    (out / DONE_NAME).write_text(json.dumps({"config": cfg_dict, "best_eval_loss": best, "history": history,
                                             "blackbox": blackbox.fingerprint}, indent=2))
    ckpt.unlink(missing_ok=True)
    tuned = model.merge_and_unload().eval()
    return LocalBlackBox(tuned, blackbox.tokenizer, identity, device)
