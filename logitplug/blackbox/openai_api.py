"""A black box behind an OpenAI-compatible completions endpoint, seen through top-k log-probs.

Works with any server that returns ``logprobs`` on ``/v1/completions`` (vLLM, llama.cpp's server,
``logitplug serve``, legacy OpenAI models); with ``api="chat"``, with chat servers that can continue
a partial assistant message (``continue_final_message``: vLLM, ``logitplug serve``): the prompt is
sent as the user's turn and the response so far as the assistant's, one request per token (also
in training, where the actual token's log-prob is known only when it is in the top-k). Teacher-forced log-probs come from ``echo=true``
(one request per sequence: top-k at every position plus the actual token's log-prob); decoding
sends one request per generated token. Answers are densified exactly as ``TopKBlackBox`` does, so
a plugin trained on a local model's top-k behaves the same against the served one.

Token ids: with ``token_ids=True`` (vLLM and ``logitplug serve``) prompts are sent as id lists
and tokens come back as ``token_id:N``. Otherwise text is sent and token strings are mapped back
through the tokenizer: an alternative whose string names no token or several (a partial UTF-8
byte shows as U+FFFD) stays in the rest bucket (counted in ``unmapped``), and a server that echoes
other tokens than were sent (it re-tokenized the text) is an error.
Requests go through the ``openai`` client (timeouts, retries with exponential backoff), at most
``concurrency`` at a time, and every answer is kept in an on-disk cache, so a rerun costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_json
from ..combine import densify_support
from .base import BlackBox

logger = logging.getLogger(__name__)

class BlackBoxUnavailable(RuntimeError):
    """The endpoint could not be reached or answered in a way logitplug cannot use."""


@dataclass
class _Rows:
    """Decoding state: each row's tokens so far (the server keeps no state between requests)."""

    rows: list[list[int]] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)

    def reorder(self, index: torch.Tensor) -> None:
        self.rows = [list(self.rows[i]) for i in index.tolist()]
        self.prompt_lens = [self.prompt_lens[i] for i in index.tolist()] if self.prompt_lens else []


class OpenAIBlackBox(BlackBox):
    full_vocab = False

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        top_k: int = 20,
        api_key: str | None = None,
        token_ids: bool = True,
        timeout: float = 60.0,
        max_retries: int = 5,
        concurrency: int = 4,
        cache_dir: str | Path | None = None,
        vocab_size: int | None = None,
        max_context: int = 2048,
        api: str = "completions",
    ):
        import openai

        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        self.api = api

        if not 1 <= top_k <= 20:
            raise ValueError(f"top_k must be in 1..20 (what OpenAI-compatible APIs return), got {top_k}")
        self.base_url, self.model, self.top_k, self.token_ids = base_url.rstrip("/"), model, int(top_k), token_ids
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size or len(tokenizer))
        self.max_context = int(max_context)
        self.device = torch.device("cpu")
        self.identity = f"openai{'-chat' if api == 'chat' else ''}:{self.base_url}:{model}@top{self.top_k}"
        self.concurrency = max(1, int(concurrency))
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "none"),
                                    timeout=timeout, max_retries=max_retries)
        self.requests_sent = 0
        self.unmapped = 0  # returned alternatives that named no single local token (left in the rest bucket)
        self._by_string: dict[str, int] | None = None

    # ---- requests -------------------------------------------------------------------------------

    def _cached(self, key_parts: list[Any], call, parse) -> dict[str, Any]:
        """One request through the on-disk cache: answered from disk when seen before, else sent with
        connection and status errors turned into ``BlackBoxUnavailable``, parsed, and stored."""
        import openai

        key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:40]
        path = self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None
        if path is not None and path.exists():
            return json.loads(path.read_text())
        try:
            self.requests_sent += 1
            answer = call()
        except openai.APIConnectionError as e:
            raise BlackBoxUnavailable(f"cannot reach the black box at {self.base_url} ({e}); is the server running?") from None
        except openai.APIStatusError as e:
            raise BlackBoxUnavailable(f"the black box at {self.base_url} refused the request: {e.status_code} {e.message}") from None
        data = parse(answer)
        if path is not None:
            atomic_write_json(path, data)
        return data

    def _request(self, ids: list[int], max_tokens: int, echo: bool) -> dict[str, Any]:
        payload = {"model": self.model, "prompt": ids if self.token_ids else self.tokenizer.decode(ids),
                   "max_tokens": max_tokens, "echo": echo, "logprobs": self.top_k, "temperature": 0.0}
        extra = {"return_tokens_as_token_ids": True} if self.token_ids else None

        def parse(answer) -> dict[str, Any]:
            lp = answer.choices[0].logprobs
            if lp is None or lp.top_logprobs is None:
                raise BlackBoxUnavailable(f"{self.base_url} returned no log-probs; it must support `logprobs` on /v1/completions")
            return {"tokens": list(lp.tokens), "token_logprobs": list(lp.token_logprobs),
                    "top_logprobs": [dict(t) if t is not None else None for t in lp.top_logprobs]}

        return self._cached([self.base_url, payload, self.token_ids],
                            lambda: self.client.completions.create(**payload, extra_body=extra), parse)

    def _chat_request(self, user: str, partial: str) -> dict[str, Any]:
        """Top-k of the next token after ``partial`` in the assistant's turn (empty: its first token).
        Continuing a partial assistant message needs a server that supports ``continue_final_message``
        (vLLM, ``logitplug serve``); OpenAI's own chat API does not."""
        messages = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": partial}] if partial else [])
        extra = {"continue_final_message": bool(partial), "add_generation_prompt": not partial}
        if self.token_ids:
            extra["return_tokens_as_token_ids"] = True
        payload = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                   "top_logprobs": self.top_k}

        def parse(answer) -> dict[str, Any]:
            content = answer.choices[0].logprobs.content if answer.choices[0].logprobs else None
            if not content:
                raise BlackBoxUnavailable(f"{self.base_url} returned no log-probs for the chat request")
            return {"top": {t.token: t.logprob for t in content[0].top_logprobs}}

        return self._cached([self.base_url, "chat", payload, extra],
                            lambda: self.client.chat.completions.create(**payload, extra_body=extra), parse)

    def _chat_next(self, row: tuple[list[int], list[int]]) -> torch.Tensor:
        prompt, generated = row
        user = self.tokenizer.decode(prompt, skip_special_tokens=True)
        return self._dense(self._chat_request(user, self.tokenizer.decode(generated, skip_special_tokens=True))["top"])

    def _map(self, token: str) -> int | None:
        """The id of a returned token; None when a string names no token or several (e.g. a partial
        UTF-8 byte decoded as U+FFFD): such alternatives are left in the rest bucket."""
        if token.startswith("token_id:"):
            return int(token.split(":", 1)[1])
        if self._by_string is None:
            table: dict[str, list[int]] = {}
            for i in range(len(self.tokenizer)):
                table.setdefault(self.tokenizer.decode([i]), []).append(i)
            self._by_string = {s: ids[0] if len(ids) == 1 else -1 for s, ids in table.items()}
        found = self._by_string.get(token)
        if found is None or found < 0:
            if self.unmapped == 0:
                logger.warning("token %r from %s names %s of the local tokenizer; such alternatives stay in the rest "
                               "bucket (servers that return token ids avoid this)", token, self.base_url,
                               "no token" if found is None else "several tokens")
            self.unmapped += 1
            return None
        return found

    def _token_text(self, i: int) -> str:
        return f"token_id:{i}" if self.token_ids else self.tokenizer.decode([i])

    def _dense(self, top: dict[str, float], actual: tuple[int, float] | None = None) -> torch.Tensor:
        pairs = [(self._map(t), v) for t, v in top.items()]
        ids = [i for i, _ in pairs if i is not None and 0 <= i < self.vocab_size]
        values = [v for i, v in pairs if i is not None and 0 <= i < self.vocab_size]
        valid = [True] * len(ids)
        if actual is not None:  # the echoed token's exact log-prob, when it is outside the top-k
            valid.append(actual[0] not in ids)
            ids.append(actual[0])
            values.append(actual[1])
        if not ids:
            ids, values, valid = [0], [0.0], [False]
        return densify_support(torch.tensor([ids]), torch.tensor([values]), torch.tensor([valid]), self.vocab_size)[0]

    def _map_rows(self, fn, rows):
        if len(rows) == 1 or self.concurrency == 1:
            return [fn(r) for r in rows]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, rows))

    # ---- the BlackBox interface ----------------------------------------------------------------

    def _sequence(self, ids: list[int]) -> torch.Tensor:
        """(T, V): the distribution after each position (the last from one generated step)."""
        data = self._request(ids, max_tokens=1, echo=True)
        if list(data["tokens"][: len(ids)]) != [self._token_text(i) for i in ids]:
            raise BlackBoxUnavailable(
                f"{self.base_url} echoed other tokens than were sent (it re-tokenized the prompt, or its tokenizer "
                "differs from the local one); use a server that takes token-id prompts (token_ids=True) and the served "
                "model's own tokenizer")
        out = torch.empty((len(ids), self.vocab_size))
        for t in range(1, len(ids)):
            top = data["top_logprobs"][t]
            out[t - 1] = self._dense(top or {}, (ids[t], data["token_logprobs"][t]))
        out[len(ids) - 1] = self._dense(data["top_logprobs"][len(ids)])
        return out

    def logprobs_at(self, input_ids, attention_mask, select=None):
        if self.api == "chat":
            return self._chat_logprobs_at(input_ids, attention_mask, select)
        rows = [r[m.bool()].tolist() for r, m in zip(input_ids.cpu(), attention_mask.cpu())]
        seqs = self._map_rows(self._sequence, rows)
        width = input_ids.shape[1]
        full = torch.zeros((len(rows), width, self.vocab_size))
        for b, (row, seq) in enumerate(zip(rows, seqs)):
            positions = attention_mask[b].cpu().bool().nonzero().squeeze(-1)
            full[b, positions] = seq
        return full[select.cpu()] if select is not None else full

    def _chat_logprobs_at(self, input_ids, attention_mask, select):
        """One request per selected (response) position: the user turn is the text up to the row's
        first selected position, the assistant's partial turn the response so far."""
        if select is None:
            raise ValueError("chat access scores response positions only: pass `select` (training does)")
        jobs = []
        for b, t in select.cpu().nonzero().tolist():
            first = int(select[b].float().argmax())
            row = input_ids[b].cpu().tolist()
            jobs.append((row[: first + 1], row[first + 1 : t + 1]))
        return torch.stack(self._map_rows(self._chat_next, jobs)) if jobs else torch.empty((0, self.vocab_size))

    def _next(self, ids: list[int]) -> torch.Tensor:
        return self._dense(self._request(ids, max_tokens=1, echo=False)["top_logprobs"][0])

    def start(self, input_ids, attention_mask):
        state = _Rows([r[m.bool()].tolist() for r, m in zip(input_ids.cpu(), attention_mask.cpu())])
        state.prompt_lens = [len(r) for r in state.rows]
        return self._advance(state), state

    def step(self, state, next_tokens):
        for row, tok in zip(state.rows, next_tokens.tolist()):
            row.append(int(tok))
        return self._advance(state)

    def _advance(self, state: "_Rows") -> torch.Tensor:
        if self.api == "chat":
            jobs = [(row[:n], row[n:]) for row, n in zip(state.rows, state.prompt_lens)]
            return torch.stack(self._map_rows(self._chat_next, jobs))
        return torch.stack(self._map_rows(self._next, state.rows))
