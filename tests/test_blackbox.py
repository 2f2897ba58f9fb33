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
