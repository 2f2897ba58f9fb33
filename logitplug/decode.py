"""Generation from a black box combined with a reweighter: greedy, sampling, beam search.

Both models keep a KV cache and advance one token per step; prompts are left-padded into
batches. The repetition penalty follows the paper's code: applied to each model's scores
separately, before they are combined, and by default only to tokens already *generated*:
penalizing prompt tokens (transformers' built-in processor) suppresses copying the input's
values, which data-to-text depends on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor

from . import _lm
from .blackbox import BlackBox
from .combine import BlackBoxOnly, CombinationRule, ProductRule, SupportProductRule
from .reweighter import Reweighter


@dataclass
class GenerationConfig:
    """Decoding settings (defaults: the paper's greedy decoding with at most 64 new tokens)."""

    strategy: Literal["greedy", "sample", "beam"] = field(default="greedy", metadata={"help": "greedy, sample or beam"})
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens generated per prompt"})
    min_new_tokens: int = field(default=0, metadata={"help": "EOS is suppressed until this many tokens exist"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass in (0, 1]"})
    num_beams: int = field(default=4, metadata={"help": "beam width for strategy=beam"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam score = logprob / length ** length_penalty"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeats (the paper: 1.1)"})
    repetition_scope: Literal["generated", "all"] = field(
        default="generated", metadata={"help": "penalize generated tokens only, or prompt tokens too"}
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "forbid repeating any generated n-gram of this size (0: off); ends the loops "
                                     "long outputs fall into, which a repetition penalty of 1.1 does not"})
    stop_strings: tuple[str, ...] = field(default=(), metadata={"help": "end a row when its text contains one after its first visible character"})
    logprobs: int = field(default=0, metadata={"help": "record the top-N log-probs of the decoding distribution at each new token"})
    batch_size: int = field(default=8, metadata={"help": "prompts decoded together"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample", "beam"):
            raise ValueError(f"strategy must be 'greedy', 'sample' or 'beam', got {self.strategy!r}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens}, {self.batch_size}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.logprobs < 0 or (self.logprobs and self.strategy == "beam"):
            raise ValueError("logprobs must be >= 0 and is not available with beam search")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.repetition_scope not in ("generated", "all"):
            raise ValueError(f"repetition_scope must be 'generated' or 'all', got {self.repetition_scope!r}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        self.stop_strings = tuple(self.stop_strings)


@dataclass
class TokenLogprobs:
    """The decoding distribution at one generated token: the chosen token's log-prob and the top N."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: Literal["eos", "stop", "length"]
    logprobs: list[TokenLogprobs] | None = None  # one per token in token_ids, when GenerationConfig.logprobs > 0


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on ``seen`` (B, V) tokens: negative scores multiplied, positive divided."""
    if penalty == 1.0:
        return scores
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


class _Combined:
    """Both models advanced in lock-step; yields combined next-token log-probs (B, V)."""

    def __init__(self, blackbox: BlackBox, reweighter: Reweighter | None, rule: CombinationRule, penalty: float):
        if rule.needs_reweighter and reweighter is None:
            raise ValueError(f"combination rule {rule.name!r} needs a reweighter")
        if reweighter is not None and reweighter.vocab_size != blackbox.vocab_size:
            raise ValueError(
                f"reweighter vocabulary ({reweighter.vocab_size}) differs from the black box's ({blackbox.vocab_size})"
            )
        self.bb, self.rw, self.rule, self.penalty = blackbox, reweighter if rule.needs_reweighter else None, rule, penalty
        # over a top-k support the reweighter needs only k rows of its head: carry hidden states
        self.sparse = (isinstance(rule, SupportProductRule) and hasattr(self.rw, "logits_for")
                       and getattr(self.rw, "supports_sparse", True))

    def start(self, input_ids, attention_mask):
        bb_lp, self.bb_state = self.bb.start(input_ids, attention_mask)
        rw = None
        if self.rw is not None:
            begin = self.rw.start_hidden if self.sparse else self.rw.start
            rw, self.rw_state = begin(input_ids.to(self.rw_device), attention_mask.to(self.rw_device))
        self._pending = (bb_lp, rw)

    @property
    def rw_device(self):
        return next(self.rw.parameters()).device

    def mode(self) -> tuple[bool, bool]:
        """What ``start`` computes for this rule: the reweighter's state at all, and in hidden-state form."""
        return self.rw is not None, self.sparse

    def fork(self, rule: CombinationRule, copy_state: bool = True) -> "_Combined":
        """An independent copy of this started pair, to be decoded through ``rule`` (of the same
        ``mode``): decoding under several rules runs the prompts through both models once.
        ``copy_state=False`` hands this pair's state over instead (its last use: no copy needed)."""
        other = copy.copy(self)
        other.rule = rule
        if copy_state:
            other.bb_state = copy.deepcopy(self.bb_state)
            if self.rw is not None:
                other.rw_state = copy.deepcopy(self.rw_state)
        return other

    def scores(self, seen: torch.Tensor) -> torch.Tensor:
        bb_lp, rw = self._pending
        bb_lp = apply_repetition_penalty(bb_lp, seen.to(bb_lp.device), self.penalty)
        if rw is not None and self.sparse:
            top = self.rule.support_mask(bb_lp).nonzero()[:, 1].view(bb_lp.shape[0], -1)  # same support as the rule's
            z = self.rw.logits_for(rw, top.to(self.rw_device))
            z = apply_repetition_penalty(z, seen.to(z.device).gather(-1, top.to(z.device)), self.penalty)
            rw = torch.zeros_like(bb_lp).scatter(-1, top, z.to(bb_lp.device))
        elif rw is not None:
            rw = apply_repetition_penalty(rw, seen.to(rw.device), self.penalty).to(bb_lp.device)
        return self.rule(bb_lp, rw)

    def advance(self, tokens: torch.Tensor) -> None:
        bb_lp = self.bb.step(self.bb_state, tokens)
        rw = None
        if self.rw is not None:
            advance = self.rw.step_hidden if self.sparse else self.rw.step
            rw = advance(self.rw_state, tokens.to(self.rw_device))
        self._pending = (bb_lp, rw)

    def reorder(self, index: torch.Tensor) -> None:
        self.bb_state.reorder(index.to(self.bb.device))
        if self.rw is not None:
            self.rw_state.reorder(index.to(self.rw_device))
        bb_lp, rw = self._pending
        self._pending = (bb_lp.index_select(0, index.to(bb_lp.device)),
                         None if rw is None else rw.index_select(0, index.to(rw.device)))


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _sample(logprobs: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    logits = logprobs / cfg.temperature
    if cfg.top_p < 1.0:
        sorted_lp, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_lp, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_lp, -1) >= cfg.top_p  # keep the smallest set reaching top_p
        sorted_lp = sorted_lp.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_lp)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logprobs.device)


class Decoder:
    """Decodes prompts (token-id lists) through ``rule`` applied to a black box and a reweighter.

    Examples:
        See ``generate`` for the one-call form; ``Decoder`` keeps the models and settings for reuse.
    """

    def __init__(
        self,
        blackbox: BlackBox,
        reweighter: Reweighter | None = None,
        rule: CombinationRule | None = None,
        config: GenerationConfig | None = None,
    ):
        self.blackbox = blackbox
        self.reweighter = reweighter.eval() if reweighter is not None else None
        self.rule = rule or (ProductRule() if reweighter is not None else BlackBoxOnly())
        self.config = config or GenerationConfig()
        self.tokenizer = blackbox.tokenizer
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        _Combined(blackbox, reweighter, self.rule, 1.0)  # validates the pairing now, not mid-decoding

    def generate_ids(self, prompts: Sequence[Sequence[int]], progress: bool = False) -> list[Generation]:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        results: list[Generation | None] = [None] * len(prompts)
        for idx, chunk in self._batches(prompts, progress):
            if cfg.strategy == "beam" and cfg.num_beams > 1:
                outs = self._beam(chunk)
            else:
                outs = self._greedy_or_sample(chunk, gen)
            for i, g in zip(idx, outs):
                results[i] = g
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def generate_ids_many(self, prompts: Sequence[Sequence[int]], rules: Sequence[CombinationRule],
                          progress: bool = False) -> list[list[Generation]]:
        """Greedy outputs of the same prompts under each of ``rules`` (e.g. one rule at several
        strengths): the same as one ``generate_ids`` per rule, but each batch's prompts run through
        both models once and every rule's decoding continues from a copy of that state. Choosing a
        strength decodes the same held-out prompts six or seven times, and the prompt pass (long with
        demonstrations) was ~40% of each decode. Sampling and beam search decode rule by rule."""
        if self.config.strategy != "greedy" or len(rules) < 2:
            return [Decoder(self.blackbox, self.reweighter, r, self.config).generate_ids(prompts, progress) for r in rules]
        pairs = [_Combined(self.blackbox, self.reweighter, r, self.config.repetition_penalty) for r in rules]
        groups: dict[tuple[bool, bool], list[int]] = {}
        for j, pair in enumerate(pairs):
            groups.setdefault(pair.mode(), []).append(j)
        results: list[list[Generation | None]] = [[None] * len(prompts) for _ in rules]
        for idx, chunk in self._batches(prompts, progress):
            padded = _left_pad(chunk, self.pad_id)
            for members in groups.values():
                started = pairs[members[0]]
                started.start(*padded)
                for n, j in enumerate(members):  # the last rule decodes from the started state itself
                    pair = started.fork(rules[j], copy_state=n < len(members) - 1)
                    for i, g in zip(idx, self._greedy_or_sample(chunk, None, pair, padded)):
                        results[j][i] = g
        return results  # type: ignore[return-value]

    def _batches(self, prompts: Sequence[Sequence[int]], progress: bool):
        """(input positions, prompts) per batch: prompts cut to the context, similar lengths together
        (less padding); callers put results back in input order."""
        cfg = self.config
        limit = self.blackbox.max_context - cfg.max_new_tokens
        if self.reweighter is not None:
            limit = min(limit, self.reweighter.lm.config.max_position_embeddings - cfg.max_new_tokens)
        if limit < 1:
            raise ValueError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the context")
        prompts = [list(p)[-limit:] for p in prompts]
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = cfg.batch_size if cfg.strategy != "beam" else max(1, cfg.batch_size // cfg.num_beams)
        for start in tqdm(range(0, len(prompts), size), desc="decoding", disable=not progress, dynamic_ncols=True):
            idx = order[start:start + size]
            yield idx, [prompts[i] for i in idx]

    def _new_seen(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen = torch.zeros((ids.shape[0], self.blackbox.vocab_size), dtype=torch.bool)
        if self.config.repetition_scope == "all":
            seen.scatter_(1, ids * mask, mask.bool())
        return seen

    def _suppress_early_eos(self, logprobs: torch.Tensor, generated: int) -> torch.Tensor:
        if generated >= self.config.min_new_tokens or self.eos_id is None:
            return logprobs
        return logprobs.index_fill(-1, torch.tensor([self.eos_id], device=logprobs.device), -math.inf)

    def _no_repeat(self, logprobs: torch.Tensor, generated: list[list[int]]) -> torch.Tensor:
        """Ban each row's tokens that would repeat one of its generated n-grams (rows are decoded in
        step, so every row holds as many generated tokens)."""
        n = self.config.no_repeat_ngram_size
        if not n or len(generated[0]) + 1 < n:
            return logprobs
        ids = torch.tensor(generated, dtype=torch.long)
        # a copy: transformers 4.x banned in place, and the pin allows any 5.x
        return NoRepeatNGramLogitsProcessor(n)(ids, logprobs.clone())

    def _stop_hit(self, tokens: list[int]) -> str | None:
        if not self.config.stop_strings:
            return None
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        # leading blank lines are not an answer's end: match only after the first visible character
        start = len(text) - len(text.lstrip())
        hits = [text.index(s, start) for s in self.config.stop_strings if s in text[start:]]
        return text[: min(hits)] if hits else None

    def _finish(self, tokens: list[int], reason: str, logprobs: list[TokenLogprobs] | None = None) -> Generation:
        text = self.tokenizer.decode([t for t in tokens if t != self.eos_id], skip_special_tokens=True)
        cut = self._stop_hit(tokens)
        if cut is not None:
            text, reason = cut, "stop"
        return Generation(text.strip(), tokens, reason, logprobs)  # type: ignore[arg-type]

    @torch.no_grad()
    def _greedy_or_sample(self, chunk: list[list[int]], gen: torch.Generator | None,
                          combined: _Combined | None = None,
                          padded: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Generation]:
        """``combined``: a pair already started on ``padded`` (``chunk`` left-padded; see ``generate_ids_many``)."""
        cfg = self.config
        ids, mask = padded if padded is not None else _left_pad(chunk, self.pad_id)
        if combined is None:
            combined = _Combined(self.blackbox, self.reweighter, self.rule, cfg.repetition_penalty)
            combined.start(ids, mask)
        seen = self._new_seen(ids, mask)
        out: list[list[int]] = [[] for _ in chunk]
        reason: list[str | None] = [None] * len(chunk)
        rows = list(range(len(chunk)))  # batch position -> prompt; finished rows leave the batch
        recorded: list[list[TokenLogprobs]] = [[] for _ in chunk]
        for length in range(cfg.max_new_tokens):
            lp = self._suppress_early_eos(combined.scores(seen), length)
            if cfg.no_repeat_ngram_size:  # no per-step list of the rows' tokens when the option is off
                lp = self._no_repeat(lp, [out[i] for i in rows])
            nxt = lp.argmax(-1) if cfg.strategy == "greedy" else _sample(lp, cfg, gen)
            nxt = nxt.cpu()
            if cfg.logprobs:
                chosen = lp.gather(-1, nxt.to(lp.device)[:, None]).squeeze(-1).tolist()
                values, ids = lp.topk(min(cfg.logprobs, lp.shape[-1]), dim=-1)
                for pos, (c, v, t) in enumerate(zip(chosen, values.tolist(), ids.tolist())):
                    recorded[rows[pos]].append(TokenLogprobs(c, list(zip(t, v))))
            for pos, tok in enumerate(nxt.tolist()):
                i = rows[pos]
                out[i].append(tok)
                seen[pos, tok] = True
                if tok == self.eos_id:
                    reason[i] = "eos"
                elif self._stop_hit(out[i]) is not None:
                    reason[i] = "stop"
            keep = [pos for pos, i in enumerate(rows) if reason[i] is None]
            if not keep or length + 1 == cfg.max_new_tokens:
                break
            if len(keep) < len(rows):  # one long row no longer drags the finished ones along
                index = torch.tensor(keep)
                combined.reorder(index)
                seen, nxt, rows = seen[index], nxt[index], [rows[p] for p in keep]
            combined.advance(nxt)
        return [self._finish(o, r or "length", recorded[i] if cfg.logprobs else None)
                for i, (o, r) in enumerate(zip(out, reason))]

    @torch.no_grad()
    def _beam(self, chunk: list[list[int]]) -> list[Generation]:
        cfg = self.config
        nb, n = cfg.num_beams, len(chunk)
        ids, mask = _left_pad(chunk, self.pad_id)
        ids, mask = ids.repeat_interleave(nb, 0), mask.repeat_interleave(nb, 0)
        combined = _Combined(self.blackbox, self.reweighter, self.rule, cfg.repetition_penalty)
        combined.start(ids, mask)
        seen = self._new_seen(ids, mask)
        scores = torch.full((n, nb), -math.inf)
        scores[:, 0] = 0.0
        beams: list[list[int]] = [[] for _ in range(n * nb)]
        finished: list[list[tuple[float, list[int], str]]] = [[] for _ in range(n)]
        done = [False] * n
        for length in range(1, cfg.max_new_tokens + 1):
            lp = self._no_repeat(self._suppress_early_eos(combined.scores(seen), length - 1).cpu(), beams)  # (n*nb, V)
            vocab = lp.shape[-1]
            cand = (scores.reshape(-1, 1) + lp).reshape(n, nb * vocab)
            top_scores, top_idx = cand.topk(2 * nb, dim=-1)
            new_rows, new_tokens, new_scores = [], [], []
            for b in range(n):
                kept = 0
                for s, flat in zip(top_scores[b].tolist(), top_idx[b].tolist()):
                    row, tok = b * nb + flat // vocab, flat % vocab
                    if s == -math.inf:
                        break
                    seq = beams[row] + [tok]
                    if done[b]:
                        break
                    if tok == self.eos_id or self._stop_hit(seq) is not None:
                        finished[b].append((s / length ** cfg.length_penalty, seq, "eos" if tok == self.eos_id else "stop"))
                        continue
                    new_rows.append(row)
                    new_tokens.append(tok)
                    new_scores.append(s)
                    kept += 1
                    if kept == nb:
                        break
                while kept < nb:  # pad a finished/empty prompt's beams with dead rows
                    new_rows.append(b * nb)
                    new_tokens.append(self.pad_id)
                    new_scores.append(-math.inf)
                    kept += 1
                if len(finished[b]) >= nb:
                    best_running = max(new_scores[b * nb:(b + 1) * nb])
                    worst_kept = sorted(f[0] for f in finished[b])[-nb]
                    if best_running / length ** cfg.length_penalty <= worst_kept:
                        done[b] = True
            if all(done):
                break
            index = torch.tensor(new_rows)
            beams = [beams[r] + [t] for r, t in zip(new_rows, new_tokens)]
            seen = seen.index_select(0, index)
            seen[torch.arange(len(new_tokens)), torch.tensor(new_tokens)] = True
            scores = torch.tensor(new_scores).reshape(n, nb)
            combined.reorder(index)
            combined.advance(torch.tensor(new_tokens))
        results = []
        for b in range(n):
            pool = finished[b] or [
                (float(scores[b, j]) / max(1, len(beams[b * nb + j])) ** cfg.length_penalty, beams[b * nb + j], "length")
                for j in range(nb)
            ]
            _, seq, why = max(pool, key=lambda f: f[0])
            results.append(self._finish(seq, why))
        return results


@torch.no_grad()
def score_ids(
    blackbox: BlackBox,
    ids: Sequence[int],
    reweighter: Reweighter | None = None,
    rule: CombinationRule | None = None,
    top_n: int = 0,
) -> list[TokenLogprobs | None]:
    """Teacher-forced log-prob of every token of ``ids`` under the (combined) model, with the top
    ``top_n`` alternatives; the first token has no context and gets None."""
    rule = rule or (ProductRule() if reweighter is not None else BlackBoxOnly())
    inp = torch.tensor([list(ids)], dtype=torch.long)
    mask = torch.ones_like(inp)
    bb = blackbox.logprobs_at(inp, mask)[0]
    rw = None
    if rule.needs_reweighter:
        if reweighter is None:
            raise ValueError(f"combination rule {rule.name!r} needs a reweighter")
        rw = reweighter.eval()(inp.to(next(reweighter.parameters()).device), mask.to(next(reweighter.parameters()).device))[0]
        rw = rw.to(bb.device)
    lp = rule(bb, rw)[:-1]  # position t predicts token t + 1
    targets = inp[0, 1:].to(lp.device)
    chosen = lp.gather(-1, targets[:, None]).squeeze(-1).tolist()
    out: list[TokenLogprobs | None] = [None]
    if top_n:
        values, top = lp.topk(min(top_n, lp.shape[-1]), dim=-1)
        out += [TokenLogprobs(c, list(zip(t, v))) for c, v, t in zip(chosen, values.tolist(), top.tolist())]
    else:
        out += [TokenLogprobs(c, []) for c in chosen]
    return out


def generate(
    blackbox: BlackBox,
    prompts: Sequence[str],
    reweighter: Reweighter | None = None,
    rule: CombinationRule | None = None,
    config: GenerationConfig | None = None,
    progress: bool = False,
) -> list[Generation]:
    """Generate from already-rendered prompt strings (see ``data.PromptTemplate.render``)."""
    tok = blackbox.tokenizer
    ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    return Decoder(blackbox, reweighter, rule, config).generate_ids(ids, progress=progress)


class PluginLogitsProcessor(LogitsProcessor):
    """Plug a trained reweighter into ``model.generate(...)`` of the black box itself.

    Receives the black box's scores, returns the combined log-probs. Keeps the reweighter's KV
    cache across steps; when rows were reordered (beam search) it matches each row to its
    previous prefix, and otherwise recomputes from scratch, so it is always correct.

    Args:
        reweighter (Reweighter): the trained plugin.
        rule (CombinationRule, default ProductRule()): how to combine.
        repetition_penalty (float, default 1.0): applied to both models' scores on generated
            tokens only (tokens after the prompt seen on the first call), as in ``Decoder``.
        attention_mask (Tensor, optional): the prompt's (B, T) mask when prompts are left-padded.
    """

    def __init__(
        self,
        reweighter: Reweighter,
        rule: CombinationRule | None = None,
        repetition_penalty: float = 1.0,
        attention_mask: torch.Tensor | None = None,
    ):
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        self.reweighter = reweighter.eval()
        self.rule = rule or ProductRule()
        self.penalty = repetition_penalty
        self.prompt_mask = attention_mask
        self._prompt_len: int | None = None
        self._prev: torch.Tensor | None = None
        self._state: _lm.StepState | None = None
        self._next_rw: torch.Tensor | None = None

    def _mask_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        mask = torch.ones((b, t), dtype=torch.long, device=input_ids.device)
        if self.prompt_mask is not None:
            pm = self.prompt_mask.to(input_ids.device)
            if pm.shape[0] != b:  # beams/samples expanded from the prompts
                pm = pm.repeat_interleave(b // pm.shape[0], 0)
            mask[:, : pm.shape[1]] = pm
        return mask

    @torch.no_grad()
    def _reweighter_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        prev = self._prev
        if prev is not None and prev.shape[1] == input_ids.shape[1] - 1 and self._state is not None:
            prefix = input_ids[:, :-1]
            same = (prefix == prev).all(-1)
            if not bool(same.all()):
                match = (prefix[:, None, :] == prev[None, :, :]).all(-1)  # (B_new, B_old)
                if bool(match.any(-1).all()):
                    self._state.reorder(match.float().argmax(-1))
                else:
                    self._state = None
            if self._state is not None:
                self._prev = input_ids.clone()
                return self.reweighter.step(self._state, input_ids[:, -1])
        logits, self._state = self.reweighter.start(input_ids, self._mask_for(input_ids))
        self._prev = input_ids.clone()
        return logits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prev is None or input_ids.shape[1] != self._prev.shape[1] + 1:
            self._prompt_len = input_ids.shape[1]  # first call of a generate() run
        rw = self._reweighter_logits(input_ids)
        bb = torch.log_softmax(scores.float(), dim=-1)
        seen = torch.zeros_like(bb, dtype=torch.bool)
        generated = input_ids[:, self._prompt_len:]
        if generated.numel():
            seen.scatter_(1, generated, True)
        bb = apply_repetition_penalty(bb, seen, self.penalty)
        rw = apply_repetition_penalty(rw.to(bb.device), seen, self.penalty)
        return self.rule(bb, rw).to(scores.dtype)
