"""The OpenAI-compatible server on a tiny black box: same numbers as local access, clear 4xx errors."""

import math

import pytest
import torch
from fastapi.testclient import TestClient

from logitplug.combine import ProductRule
from logitplug.decode import Decoder, GenerationConfig
from logitplug.reweighter import Reweighter, ReweighterConfig
from logitplug.serve import ServeConfig, create_app
from loopback import serving
from tiny import tiny_blackbox

PROMPT = "name[Aromi], area[city centre]\n"


@pytest.fixture(scope="module")
def models():
    bb = tiny_blackbox(seed=1)
    rw = Reweighter.build(ReweighterConfig(hidden_size=32, num_heads=2, intermediate_size=64), bb.vocab_size,
                          bb.tokenizer, seed=2)
    with torch.no_grad():
        rw.lm.lm_head.weight.mul_(40)
    bb.tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                                  "{% if add_generation_prompt %}<assistant>{% endif %}")
    return bb, rw


def test_greedy_completion_and_logprobs_match_local_access(models):
    bb, _ = models
    client = TestClient(create_app(bb, config=ServeConfig(model_name="tiny")))
    res = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 5,
                                               "return_tokens_as_token_ids": True})
    assert res.status_code == 200, res.text
    body = res.json()["choices"][0]
    ids = bb.tokenizer(PROMPT)["input_ids"]
    local = Decoder(bb, config=GenerationConfig(max_new_tokens=8)).generate_ids([ids])[0]
    got = [int(t.split(":")[1]) for t in body["logprobs"]["tokens"]]
    assert got == local.token_ids
    # the first generated token's log-probs are the black box's next-token log-probs after the prompt
    lp = bb.logprobs_at(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1]
    top = body["logprobs"]["top_logprobs"][0]
    assert len(top) == 5
    for key, value in top.items():
        assert math.isclose(value, float(lp[int(key.split(":")[1])]), abs_tol=1e-5)
    assert math.isclose(body["logprobs"]["token_logprobs"][0], float(lp[got[0]]), abs_tol=1e-5)


def test_echo_scores_the_prompt_teacher_forced(models):
    bb, _ = models
    client = TestClient(create_app(bb))
    ids = bb.tokenizer(PROMPT)["input_ids"]
    res = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 3,
                                               "return_tokens_as_token_ids": True})
    assert res.status_code == 200, res.text
    lp = res.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == len(ids)
    full = bb.logprobs_at(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
    want = [float(full[t - 1, ids[t]]) for t in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-5)


def test_the_adapted_model_is_served_with_the_same_api(models):
    bb, rw = models
    client = TestClient(create_app(bb, rw, ProductRule(), ServeConfig(repetition_penalty=1.1)))
    ids = bb.tokenizer(PROMPT)["input_ids"]
    res = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 10, "temperature": 0})
    local = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=10, repetition_penalty=1.1)).generate_ids([ids])[0]
    assert res.json()["choices"][0]["text"].strip() == local.text
    plain = Decoder(bb, config=GenerationConfig(max_new_tokens=10, repetition_penalty=1.1)).generate_ids([ids])[0]
    assert local.text != plain.text  # the plugin changes what is served
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                                      "temperature": 0, "logprobs": True, "top_logprobs": 2})
    assert chat.status_code == 200, chat.text
    content = chat.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == chat.json()["usage"]["completion_tokens"] and all(len(c["top_logprobs"]) == 2 for c in content)


@pytest.mark.parametrize("payload, status, message", [
    ({"prompt": "x", "max_tokens": 4, "logprobs": 50}, 400, "outside 0..20"),
    ({"prompt": "x", "max_tokens": 10_000}, 400, "exceeds this server's limit"),
    ({"prompt": "x " * 300, "max_tokens": 1}, 400, "at most 64"),
    ({"prompt": [10_000], "max_tokens": 1}, 400, "ids in 0.."),
    ({"max_tokens": 1}, 400, "malformed request: prompt"),
    ({"prompt": "x", "max_tokens": -1}, 400, "malformed request"),
    ({"prompt": "x", "max_tokens": 0}, 400, "unless echo"),
    ({"prompt": "x", "n": 2}, 400, "only n=1"),
])
def test_bad_requests_get_a_clear_4xx(models, payload, status, message):
    bb, _ = models
    client = TestClient(create_app(bb, config=ServeConfig(max_prompt_tokens=64)))
    res = client.post("/v1/completions", json=payload)
    assert res.status_code == status and message in res.json()["error"]["message"], res.text


def test_api_key_and_body_size(models):
    bb, _ = models
    client = TestClient(create_app(bb, config=ServeConfig(api_key="secret")))
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401
    ok = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"Authorization": "Bearer secret"})
    assert ok.status_code == 200
    big = client.post("/v1/completions", content=b"{" + b" " * 1_100_000 + b"}",
                      headers={"Authorization": "Bearer secret", "content-type": "application/json"})
    assert big.status_code == 413
    assert client.get("/health").status_code == 200


def test_loopback_with_the_openai_client_while_other_clients_are_served(models, tmp_path):
    """A real HTTP server (uvicorn on loopback) and the official openai client."""
    import threading

    import httpx
    import openai

    bb, _ = models
    with serving(create_app(bb, config=ServeConfig(model_name="tiny"))) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
        ids = bb.tokenizer(PROMPT)["input_ids"]
        local = Decoder(bb, config=GenerationConfig(max_new_tokens=6)).generate_ids([ids])[0]
        assert out.choices[0].text.strip() == local.text and len(out.choices[0].logprobs.top_logprobs[0]) == 3
        # a malformed request from another client is answered (400) while a long generation runs
        results = {}
        slow = threading.Thread(target=lambda: results.setdefault("slow", client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=60, temperature=0)))
        slow.start()
        bad = httpx.post(f"{url}/completions", json={"prompt": "x", "logprobs": 99}, timeout=30)
        slow.join()
        assert bad.status_code == 400 and "slow" in results


@pytest.fixture()
def served(models):
    with serving(create_app(models[0], config=ServeConfig(model_name="tiny"))) as url:
        yield url


def test_client_black_box_over_http_equals_local_topk_access(models, served, tmp_path):
    from logitplug.blackbox import TopKBlackBox
    from logitplug.blackbox.openai_api import OpenAIBlackBox

    bb, _ = models
    remote = OpenAIBlackBox(served, "tiny", bb.tokenizer, top_k=5, cache_dir=tmp_path / "responses", max_context=256)
    local = TopKBlackBox(bb, 5)
    rows = [bb.tokenizer(p)["input_ids"] for p in (PROMPT, "Blue Spice serves")]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])  # right-padded, as in training
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    select = mask.bool().clone()
    select[0, -1] = False
    torch.testing.assert_close(remote.logprobs_at(ids, mask, select), local.logprobs_at(ids, mask, select), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(remote.logprobs_at(ids, mask)[mask.bool()], local.logprobs_at(ids, mask)[mask.bool()],
                               atol=1e-4, rtol=1e-4)
    gen = GenerationConfig(max_new_tokens=6)
    prompts = [bb.tokenizer(PROMPT)["input_ids"]]
    assert [g.token_ids for g in Decoder(remote, config=gen).generate_ids(prompts)] == \
        [g.token_ids for g in Decoder(local, config=gen).generate_ids(prompts)]
    sent = remote.requests_sent
    Decoder(remote, config=gen).generate_ids(prompts)  # answered from the on-disk cache
    assert remote.requests_sent == sent


def test_client_reports_an_unreachable_endpoint_clearly(models):
    from logitplug.blackbox.openai_api import BlackBoxUnavailable, OpenAIBlackBox

    bb, _ = models
    remote = OpenAIBlackBox("http://127.0.0.1:9/v1", "x", bb.tokenizer, top_k=5, max_retries=0, timeout=2)
    ids = torch.tensor([bb.tokenizer(PROMPT)["input_ids"]])
    with pytest.raises(BlackBoxUnavailable, match="cannot reach the black box"):
        remote.start(ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="top_k must be"):
        OpenAIBlackBox("http://127.0.0.1:9/v1", "x", bb.tokenizer, top_k=50)


def test_client_without_token_ids_maps_token_strings_back(models, served, tmp_path):
    from logitplug.blackbox.openai_api import OpenAIBlackBox

    bb, _ = models
    by_ids = OpenAIBlackBox(served, "tiny", bb.tokenizer, top_k=5, max_context=256)
    by_text = OpenAIBlackBox(served, "tiny", bb.tokenizer, top_k=5, max_context=256, token_ids=False)
    ids = torch.tensor([bb.tokenizer("Blue Spice serves cheap food")["input_ids"]])
    mask = torch.ones_like(ids)
    a, b = by_text.logprobs_at(ids, mask), by_ids.logprobs_at(ids, mask)
    # the same numbers wherever a returned string names one token; ambiguous ones join the rest bucket
    actual = ids[0, 1:]
    torch.testing.assert_close(a[0, :-1].gather(-1, actual[:, None]), b[0, :-1].gather(-1, actual[:, None]))
    assert torch.allclose(a.exp().sum(-1), torch.ones(1, ids.shape[1]), atol=1e-4)
    if by_text.unmapped == 0:
        torch.testing.assert_close(a, b)


def test_a_server_prefix_is_read_by_the_model_but_hidden_from_the_client(models):
    """A plugin trained under fixed demonstrations is served with them: the client sends the task
    prompt alone and gets what the adapted model says after demonstrations + prompt."""
    bb, rw = models
    head = "name[Zizzi], food[Thai]\nZizzi serves Thai food.\n\n"
    client = TestClient(create_app(bb, rw, ProductRule(), ServeConfig(prompt_prefix=head)))
    full_ids = bb.tokenizer(head + PROMPT)["input_ids"]
    hidden = len(bb.tokenizer(head)["input_ids"])
    res = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "echo": True,
                                               "logprobs": 1, "return_tokens_as_token_ids": True})
    assert res.status_code == 200, res.text
    body = res.json()
    local = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=6)).generate_ids([full_ids])[0]
    tokens = [int(t.split(":")[1]) for t in body["choices"][0]["logprobs"]["tokens"]]
    assert tokens == full_ids[hidden:] + local.token_ids  # the client sees its own prompt, not the head
    assert body["choices"][0]["text"].startswith(PROMPT) and head not in body["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == len(full_ids) - hidden
    # the first echoed token is scored after the head, so it has a log-prob
    assert body["choices"][0]["logprobs"]["token_logprobs"][0] is not None
    bare = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=6)).generate_ids([full_ids[hidden:]])[0]
    assert local.token_ids != bare.token_ids  # the head matters, so the check above could fail

    demos = ({"role": "user", "content": "name[Zizzi]"}, {"role": "assistant", "content": "Zizzi."})
    chat = TestClient(create_app(bb, rw, ProductRule(), ServeConfig(prefix_messages=demos)))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name[Aromi]"}]
    res = chat.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "temperature": 0})
    assert res.status_code == 200, res.text
    prompt = bb.tokenizer.apply_chat_template([messages[0], *demos, messages[1]], tokenize=False,
                                              add_generation_prompt=True)
    ids = bb.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    want = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=4)).generate_ids([ids])[0]
    assert res.json()["choices"][0]["message"]["content"].strip() == want.text
    client_only = bb.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert res.json()["usage"]["prompt_tokens"] == len(bb.tokenizer(client_only, add_special_tokens=False)["input_ids"])


def test_chat_can_continue_a_partial_assistant_message(models):
    bb, _ = models
    client = TestClient(create_app(bb))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Aromi is"}]
    res = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "temperature": 0,
                                                    "continue_final_message": True, "add_generation_prompt": False})
    assert res.status_code == 200, res.text
    prompt = bb.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                              continue_final_message=True)
    ids = bb.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    local = Decoder(bb, config=GenerationConfig(max_new_tokens=3)).generate_ids([ids])[0]
    assert res.json()["choices"][0]["message"]["content"].strip() == local.text
    bad = client.post("/v1/chat/completions", json={"messages": messages[:1], "continue_final_message": True})
    assert bad.status_code == 400 and "assistant" in bad.json()["error"]["message"]


def test_chat_access_steers_token_by_token_through_continued_assistant_turns(models, served, tmp_path):
    from logitplug.blackbox.openai_api import OpenAIBlackBox
    from logitplug.combine import truncate_to_topk

    bb, _ = models
    remote = OpenAIBlackBox(served, "tiny", bb.tokenizer, top_k=5, cache_dir=tmp_path / "r", max_context=256, api="chat")
    user = "Aromi is"
    prompt = bb.tokenizer(user)["input_ids"]

    def local_next(partial: str):
        msgs = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": partial}] if partial else [])
        text = bb.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not partial,
                                                continue_final_message=bool(partial))
        ids = bb.tokenizer(text, add_special_tokens=False)["input_ids"]
        return truncate_to_topk(bb.logprobs_at(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1], 5)

    first, state = remote.start(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long))
    torch.testing.assert_close(first[0], local_next(""), atol=1e-4, rtol=1e-4)
    nxt = bb.tokenizer(" a coffee")["input_ids"]
    second = remote.step(state, torch.tensor([nxt[0]]))
    torch.testing.assert_close(second[0], local_next(bb.tokenizer.decode([nxt[0]])), atol=1e-4, rtol=1e-4)
    # training: one request per response position, the user turn being the prompt
    ids = torch.tensor([prompt + nxt])
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, len(prompt) - 1 : ids.shape[1] - 1] = True
    scored = remote.logprobs_at(ids, torch.ones_like(ids), select)
    assert scored.shape == (len(nxt), bb.vocab_size)
    torch.testing.assert_close(scored[0], first[0])
    with pytest.raises(ValueError, match="pass `select`"):
        remote.logprobs_at(ids, torch.ones_like(ids))
