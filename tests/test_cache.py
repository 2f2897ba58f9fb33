import pytest
import torch

from logitplug.cache import CacheMismatchError, LogProbCache
from logitplug.combine import ProductRule
from logitplug.data import Example, PromptTemplate, collate, encode_example, targets_of
from tiny import tiny_blackbox

TEMPLATE = PromptTemplate("t", "Attributes: {input}\nSentence:")
ROWS = [Example("name[Aromi], area[city centre]", "Aromi is a coffee shop in the city centre."),
        Example("name[Blue Spice]", "Blue Spice serves cheap Italian food.")]


def _encoded(bb):
    return [encode_example(bb.tokenizer, TEMPLATE, r, 128) for r in ROWS]


def test_round_trip_keeps_target_exact_and_survives_reopen(tmp_path):
    bb = tiny_blackbox()
    enc = _encoded(bb)
    cache = LogProbCache(tmp_path, bb.fingerprint, bb.vocab_size, top_k=4)
    assert cache.get(enc[0]) is None
    b = collate(enc[:1], 0)
    full = bb.logprobs_at(b["input_ids"], b["attention_mask"], b["target_mask"])
    tg = targets_of(b)
    cache.put(enc[0], full, tg)
    reopened = LogProbCache(tmp_path, bb.fingerprint, bb.vocab_size, top_k=4)
    entry = reopened.get(enc[0])
    assert entry is not None and reopened.hits == 1
    dense = reopened.dense([entry])
    assert torch.allclose(dense.gather(-1, tg[:, None]), full.gather(-1, tg[:, None]))  # target exact
    assert torch.allclose(dense.exp().sum(-1), torch.ones(len(tg)), atol=1e-4)
    assert reopened.get(enc[1]) is None  # another text is another key


def test_cache_of_another_model_is_refused(tmp_path):
    bb = tiny_blackbox()
    LogProbCache(tmp_path, bb.fingerprint, bb.vocab_size, top_k=4)
    other = tiny_blackbox(identity="another")
    with pytest.raises(CacheMismatchError, match="written for"):
        LogProbCache(tmp_path, other.fingerprint, other.vocab_size, top_k=4)
    with pytest.raises(CacheMismatchError):
        LogProbCache(tmp_path, bb.fingerprint, bb.vocab_size, top_k=8)
    # different identities never share keys either
    enc = _encoded(bb)[0]
    assert LogProbCache(tmp_path / "a", bb.fingerprint, bb.vocab_size).key(enc) != \
        LogProbCache(tmp_path / "b", other.fingerprint, other.vocab_size).key(enc)


@pytest.mark.parametrize("top_k,tolerance", [(319, 1e-4), (64, 0.05)])
def test_cached_loss_is_close_to_exact_loss(tmp_path, top_k, tolerance):
    """The documented approximation: exact when k covers the vocabulary, and small for k=64 of 320."""
    torch.manual_seed(0)
    bb = tiny_blackbox()
    enc = _encoded(bb)
    b = collate(enc, 0)
    full = bb.logprobs_at(b["input_ids"], b["attention_mask"], b["target_mask"])
    tg = targets_of(b)
    cache = LogProbCache(tmp_path, bb.fingerprint, bb.vocab_size, top_k=top_k)
    entries, start = [], 0
    for e in enc:
        n = len(e.input_ids) - e.prompt_len
        entries.append(cache.put(e, full[start:start + n], tg[start:start + n]))
        start += n
    rw = torch.randn_like(full) * 2
    exact = -ProductRule()(full, rw).gather(-1, tg[:, None]).mean()
    cached = -ProductRule()(cache.dense(entries), rw).gather(-1, tg[:, None]).mean()
    assert abs(float(exact - cached)) < tolerance * float(exact)
