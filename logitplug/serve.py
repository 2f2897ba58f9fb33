"""``logitplug serve``: an OpenAI-compatible HTTP server for a black box, or a black box + plugin.

Serves ``/v1/completions`` and ``/v1/chat/completions`` with log-probabilities (top-N per token,
up to ``max_logprobs``; -1 allows the whole vocabulary), ``echo`` for teacher-forced scoring of a
prompt, token-id prompts, and vLLM's ``return_tokens_as_token_ids`` so that a client can map
tokens back to ids exactly (decoded strings are ambiguous). With a plugin, every number it
returns is the *adapted* model's: the server is a drop-in endpoint for the adapted black box.
A plugin trained under fixed demonstrations gets them from the server (``prompt_prefix`` /
``prefix_messages``): clients send the task prompt alone and see only their own tokens in
``echo``, log-probs and ``usage``.

Model work runs one request at a time behind a lock, in FastAPI's thread pool, so the server
keeps answering other clients (errors, ``/v1/models``) while a generation runs.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from .blackbox import BlackBox
from .combine import BlackBoxOnly, CombinationRule, ProductRule
from .decode import Decoder, Generation, GenerationConfig, TokenLogprobs, score_ids
from .reweighter import Reweighter

MAX_BODY_BYTES = 1_000_000


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    logprobs: int | None = None
    echo: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    return_tokens_as_token_ids: bool = False

class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str

class ChatRequest(BaseModel):
    """Chat completion; ``continue_final_message`` (as in vLLM) continues a partial assistant
    message, which is what per-token steering through a chat API needs."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    return_tokens_as_token_ids: bool = False
    continue_final_message: bool = False
    add_generation_prompt: bool = True


@dataclass
class ServeConfig:
    """Limits and identity of a served model."""

    model_name: str = "logitplug"
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    max_logprobs: int = 20  # -1: the whole vocabulary may be asked for
    repetition_penalty: float = 1.0  # applied to generated tokens, as in logitplug generate
    # put before every completion prompt / chat conversation, unseen by clients: the fixed
    # demonstrations a plugin was trained under, so clients send the task prompt alone
    prompt_prefix: str = ""
    prefix_messages: tuple[dict[str, str], ...] = ()


class ServeError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def create_app(
    blackbox: BlackBox,
    reweighter: Reweighter | None = None,
    rule: CombinationRule | None = None,
    config: ServeConfig | None = None,
):
    """The FastAPI app; run it with uvicorn (``logitplug serve`` does)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    cfg = config or ServeConfig()
    rule = rule or (ProductRule() if reweighter is not None else BlackBoxOnly())
    tok = blackbox.tokenizer
    lock = threading.Lock()
    vocab = blackbox.vocab_size

    app = FastAPI(title="logitplug", description=__doc__)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError):
        return JSONResponse(status_code=exc.status, content={"error": {"message": exc.message, "type": exc.kind}})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"error": {"message": f"malformed request: {problems}",
                                                                "type": "invalid_request_error"}})

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            return JSONResponse(status_code=413, content={"error": {
                "message": f"request body of {size} bytes exceeds {MAX_BODY_BYTES}", "type": "invalid_request_error"}})
        if cfg.api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {cfg.api_key}":
                return JSONResponse(status_code=401, content={"error": {
                    "message": "missing or wrong API key (Authorization: Bearer ...)", "type": "authentication_error"}})
        return await call_next(request)

    def token_text(i: int, as_ids: bool) -> str:
        return f"token_id:{i}" if as_ids else tok.decode([i])

    def check_common(n: int, max_tokens: int, top: int | None) -> None:
        if n != 1:
            raise ServeError(400, "only n=1 is supported")
        if max_tokens > cfg.max_tokens:
            raise ServeError(400, f"max_tokens={max_tokens} exceeds this server's limit of {cfg.max_tokens}")
        if top is not None:
            limit = vocab if cfg.max_logprobs == -1 else cfg.max_logprobs
            if top < 0 or top > limit:
                raise ServeError(400, f"logprobs={top} is outside 0..{limit} allowed by this server")

    prefix_ids = tok(cfg.prompt_prefix, add_special_tokens=True)["input_ids"] if cfg.prompt_prefix else []

    def encode(prompt: str | list[int]) -> tuple[list[int], int]:
        """(the token ids the model reads, how many of them are the server's prefix)."""
        if isinstance(prompt, list):
            if not prompt or any(not 0 <= t < vocab for t in prompt):
                raise ServeError(400, f"a token-id prompt must be a non-empty list of ids in 0..{vocab - 1}")
            ids = prefix_ids + list(prompt)
        else:
            if not prompt:
                raise ServeError(400, "the prompt is empty")
            # one tokenization of prefix + prompt, as in training; if the boundary merges tokens,
            # the client's prompt is tokenized on its own instead
            ids = tok(cfg.prompt_prefix + prompt, add_special_tokens=True)["input_ids"]
            if ids[: len(prefix_ids)] != prefix_ids:
                ids = prefix_ids + tok(prompt, add_special_tokens=not prefix_ids)["input_ids"]
            if len(ids) == len(prefix_ids):
                raise ServeError(400, "the prompt is empty")
        check_prompt(len(ids) - len(prefix_ids))
        return ids, len(prefix_ids)

    def check_prompt(client_tokens: int) -> None:
        if client_tokens > cfg.max_prompt_tokens:
            raise ServeError(400, f"the prompt has {client_tokens} tokens; this server accepts at most "
                                  f"{cfg.max_prompt_tokens}")

    def check_context(total_tokens: int, hidden_tokens: int, max_tokens: int) -> None:
        if total_tokens + max_tokens > blackbox.max_context:
            raise ServeError(400, f"prompt ({total_tokens}{' with the server prefix' if hidden_tokens else ''}) + "
                                  f"max_tokens ({max_tokens}) exceeds the context window of {blackbox.max_context} tokens")

    def run(ids: list[int], max_tokens: int, temperature: float, top_p: float, stop, seed, top: int) -> Generation:
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        gen = GenerationConfig(
            strategy="greedy" if temperature == 0 else "sample", max_new_tokens=max_tokens,
            temperature=temperature or 1.0, top_p=top_p, stop_strings=stops, seed=seed or 0,
            repetition_penalty=cfg.repetition_penalty, batch_size=1, logprobs=top,
        )
        with lock:
            return Decoder(blackbox, reweighter, rule, gen).generate_ids([ids])[0]

    def raw_text(g: Generation, stop) -> str:
        """The completion as generated (leading spaces kept, unlike ``Generation.text``), cut at a stop string."""
        text = tok.decode([t for t in g.token_ids if t != tok.eos_token_id], skip_special_tokens=True)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        hits = [text.index(s) for s in stops if s in text]
        return text[: min(hits)] if hits else text

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish(g: Generation) -> str:
        return "stop" if g.finish_reason in ("eos", "stop") else "length"

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "owned_by": "logitplug",
                                            "created": 0}]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> dict[str, Any]:
        check_common(req.n, req.max_tokens, req.logprobs)
        ids, hidden = encode(req.prompt)
        if req.max_tokens == 0 and not req.echo:
            raise ServeError(400, "max_tokens=0 returns nothing unless echo=true")
        check_context(len(ids), hidden, req.max_tokens)
        top = req.logprobs or 0
        tokens: list[int] = []
        steps: list[TokenLogprobs | None] = []
        text, reason, generated = "", "length", 0
        if req.echo:
            with lock:
                steps += score_ids(blackbox, ids, reweighter, rule, top)[hidden:]
            tokens += ids[hidden:]
            text += tok.decode(ids[hidden:], skip_special_tokens=True)
        if req.max_tokens:
            g = run(ids, req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, top)
            tokens += g.token_ids
            steps += g.logprobs or [TokenLogprobs(0.0, []) for _ in g.token_ids]
            text += raw_text(g, req.stop)
            reason, generated = finish(g), len(g.token_ids)
        logprobs = None
        if req.logprobs is not None:
            as_ids = req.return_tokens_as_token_ids
            offsets, pos = [], 0
            for t in tokens:
                offsets.append(pos)
                pos += len(tok.decode([t]))
            logprobs = {
                "tokens": [token_text(t, as_ids) for t in tokens],
                "token_logprobs": [None if s is None else s.logprob for s in steps],
                "top_logprobs": [None if s is None else {token_text(i, as_ids): v for i, v in s.top} for s in steps],
                "text_offset": offsets,
            }
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": cfg.model_name, "choices": [{"index": 0, "text": text, "finish_reason": reason,
                                                      "logprobs": logprobs}],
                "usage": usage(len(ids) - hidden, generated)}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict[str, Any]:
        max_tokens = req.max_completion_tokens or req.max_tokens or 256
        top = req.top_logprobs if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise ServeError(400, "top_logprobs needs logprobs=true")
        check_common(req.n, max_tokens, top)
        if not getattr(tok, "chat_template", None):
            raise ServeError(400, "this model has no chat template; use /v1/completions")
        messages = [m.model_dump() for m in req.messages]
        if req.continue_final_message and messages[-1]["role"] != "assistant":
            raise ServeError(400, "continue_final_message needs the last message to be the assistant's")

        def chat_ids(msgs: list[dict[str, str]]) -> list[int]:
            if req.continue_final_message:
                prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False,
                                                 continue_final_message=True)
            else:
                prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=req.add_generation_prompt)
            return tok(prompt, add_special_tokens=False)["input_ids"]

        ids = client_ids = chat_ids(messages)
        if cfg.prefix_messages:  # after the client's system message, if any
            head = 1 if messages[0]["role"] == "system" else 0
            ids = chat_ids(messages[:head] + [dict(m) for m in cfg.prefix_messages] + messages[head:])
        check_prompt(len(client_ids))
        check_context(len(ids), len(ids) - len(client_ids), max_tokens)
        g = run(ids, max_tokens, req.temperature, req.top_p, req.stop, req.seed, top or (1 if req.logprobs else 0))
        logprobs = None
        if req.logprobs:
            as_ids = req.return_tokens_as_token_ids

            def entry(i: int, v: float) -> dict[str, Any]:
                text = token_text(i, as_ids)
                return {"token": text, "logprob": v, "bytes": list(tok.decode([i]).encode("utf-8"))}

            logprobs = {"content": [{**entry(t, s.logprob), "top_logprobs": [entry(i, v) for i, v in s.top[: top or 0]]}
                                    for t, s in zip(g.token_ids, g.logprobs or [])]}
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": cfg.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": raw_text(g, req.stop)},
                             "finish_reason": finish(g), "logprobs": logprobs}],
                "usage": usage(len(client_ids), len(g.token_ids))}

    return app
