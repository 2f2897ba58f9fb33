import pytest
import torch
from transformers import LogitsProcessorList

from logitplug.combine import BlackBoxOnly, ProductRule
from logitplug.decode import Decoder, GenerationConfig, PluginLogitsProcessor, apply_repetition_penalty
from logitplug.reweighter import Reweighter, ReweighterConfig
from tiny import tiny_blackbox

PROMPTS = ["name[Aromi], area[city centre]\n", "Blue Spice serves", "The Eagle is a family friendly pub near the"]


def _setup():
    bb = tiny_blackbox(seed=1)
    rw = Reweighter.build(ReweighterConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2),
                          bb.vocab_size, bb.tokenizer, seed=2)
    with torch.no_grad():  # a random head is too flat to matter; make the reweighting strong
        rw.lm.lm_head.weight.mul_(40)
    ids = [bb.tokenizer(p)["input_ids"] for p in PROMPTS]
    return bb, rw, ids


def _hf_generate(bb, ids, processors, max_new_tokens, **kw):
    width = max(len(r) for r in ids)
    pad = bb.tokenizer.pad_token_id
    inp = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    out = bb.model.generate(
        input_ids=inp, attention_mask=mask, logits_processor=LogitsProcessorList(processors(mask)),
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=bb.tokenizer.eos_token_id,
        pad_token_id=pad, repetition_penalty=None, **kw,
    )
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(bb.tokenizer.eos_token_id) + 1] if bb.tokenizer.eos_token_id in row else row)
    return rows


@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_logits_processor_adapter_matches_our_greedy_loop(penalty):
    bb, rw, ids = _setup()
    ours = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=16, repetition_penalty=penalty)).generate_ids(ids)
    theirs = _hf_generate(bb, ids, lambda m: [PluginLogitsProcessor(rw, repetition_penalty=penalty, attention_mask=m)], 16)
    assert [g.token_ids for g in ours] == theirs
    # and the plugin really changes the output (the test would be vacuous otherwise)
    plain = Decoder(bb, None, BlackBoxOnly(), GenerationConfig(max_new_tokens=16)).generate_ids(ids)
    assert [g.token_ids for g in plain] != theirs


def test_blackbox_alone_matches_transformers_greedy():
    bb, _, ids = _setup()
    ours = Decoder(bb, None, BlackBoxOnly(), GenerationConfig(max_new_tokens=12)).generate_ids(ids)
    assert [g.token_ids for g in ours] == _hf_generate(bb, ids, lambda m: [], 12)


def test_adapter_follows_beam_reordering_in_generate():
    bb, rw, ids = _setup()
    out = _hf_generate(bb, ids[:1], lambda m: [PluginLogitsProcessor(rw, attention_mask=m)], 10, num_beams=3)
    ours = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=10, strategy="beam", num_beams=3)).generate_ids(ids[:1])
    # beam search implementations differ in tie-breaking details; the first tokens must agree
    assert out[0][:3] == ours[0].token_ids[:3]


def test_batching_does_not_change_greedy_output():
    bb, rw, ids = _setup()
    batched = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=12, batch_size=3)).generate_ids(ids)
    single = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=12, batch_size=1)).generate_ids(ids)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]


def test_sampling_is_seeded():
    bb, rw, ids = _setup()
    run = lambda seed: [g.token_ids for g in Decoder(  # noqa: E731
        bb, rw, config=GenerationConfig(strategy="sample", max_new_tokens=10, seed=seed, temperature=1.5)).generate_ids(ids)]
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_beam_search_scores_at_least_as_well_as_greedy_here():
    bb, rw, ids = _setup()
    cfg = dict(max_new_tokens=8, length_penalty=0.0)
    greedy = Decoder(bb, rw, config=GenerationConfig(**cfg)).generate_ids(ids)
    beam = Decoder(bb, rw, config=GenerationConfig(strategy="beam", num_beams=4, **cfg)).generate_ids(ids)

    @torch.no_grad()
    def logprob(prompt, tokens):
        full = torch.tensor([prompt + tokens])
        rw_logits = rw(full, torch.ones_like(full))[0]
        lp = ProductRule()(bb.logprobs_at(full, torch.ones_like(full))[0], rw_logits)
        return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))

    for p, g, b in zip(ids, greedy, beam):
        if g.finish_reason == b.finish_reason == "length":
            assert logprob(p, b.token_ids) >= logprob(p, g.token_ids) - 1e-4


def test_stop_strings_cut_the_text():
    bb, rw, ids = _setup()
    first = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=12)).generate_ids(ids[:1])[0]
    stop = first.text[len(first.text) // 2:][:3]
    assert stop.strip()
    cut = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=12, stop_strings=(stop,))).generate_ids(ids[:1])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and first.text.startswith(cut.text)


def test_repetition_penalty_scope_and_arguments():
    scores = torch.tensor([[-1.0, 2.0, -3.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(scores, seen, 2.0).tolist() == [[-2.0, 1.0, -3.0]]
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="strategy must be"):
        GenerationConfig(strategy="magic")  # type: ignore[arg-type]
    bb, rw, ids = _setup()
    with pytest.raises(ValueError, match="leaves no room"):
        Decoder(bb, rw, config=GenerationConfig(max_new_tokens=5000)).generate_ids(ids)


def test_long_prompts_are_cut_to_fit_the_context():
    bb, rw, ids = _setup()
    long_prompt = ids[0] * 40  # longer than the tiny model's 256 positions
    out = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=4)).generate_ids([long_prompt])
    assert len(out[0].token_ids) <= 4


def test_min_new_tokens_suppresses_early_eos():
    bb, rw, ids = _setup()
    out = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=6, min_new_tokens=6)).generate_ids(ids)
    assert all(len(g.token_ids) == 6 and bb.tokenizer.eos_token_id not in g.token_ids for g in out)
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=3, min_new_tokens=4)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_topk_support_decoding_computes_only_k_head_rows_and_matches_the_dense_rule(penalty):
    from logitplug.combine import SupportProductRule
    from logitplug.decode import _Combined, _left_pad

    bb, rw, ids = _setup()
    rule = SupportProductRule(k=5)
    ours = Decoder(bb, rw, rule, GenerationConfig(max_new_tokens=16, repetition_penalty=penalty)).generate_ids(ids)
    # the adapter runs the rule on full-vocabulary logits: the dense reference
    theirs = _hf_generate(bb, ids, lambda m: [PluginLogitsProcessor(rw, rule, repetition_penalty=penalty, attention_mask=m)], 16)
    assert [g.token_ids for g in ours] == theirs
    full = Decoder(bb, rw, ProductRule(), GenerationConfig(max_new_tokens=16, repetition_penalty=penalty)).generate_ids(ids)
    plain = Decoder(bb, None, BlackBoxOnly(), GenerationConfig(max_new_tokens=16)).generate_ids(ids)
    assert [g.token_ids for g in ours] != [g.token_ids for g in plain]  # the reweighting acts on the support
    assert [g.token_ids for g in ours] != [g.token_ids for g in full]  # and cannot reach outside it
    # step by step, with a beam-style reorder, the sparse and dense paths give the same scores
    inp, mask = _left_pad(ids, bb.tokenizer.pad_token_id)
    sparse, dense = _Combined(bb, rw, rule, penalty), _Combined(bb, rw, rule, penalty)
    dense.sparse = False
    assert sparse.sparse
    sparse.start(inp, mask)
    dense.start(inp, mask)
    seen = torch.zeros((3, bb.vocab_size), dtype=torch.bool)
    for step in range(4):
        a, b = sparse.scores(seen), dense.scores(seen)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        if step == 1:
            order = torch.tensor([2, 0, 0])
            sparse.reorder(order)
            dense.reorder(order)
            seen = seen[order]
            a = sparse.scores(seen)
        nxt = a.argmax(-1)
        seen[torch.arange(3), nxt] = True
        sparse.advance(nxt)
        dense.advance(nxt)


def test_a_leading_blank_line_is_not_a_stop():
    bb, rw, _ = _setup()
    dec = Decoder(bb, rw, config=GenerationConfig(stop_strings=("\n\n",)))
    ids = bb.tokenizer("\n\nThe pub.\n\nNext", add_special_tokens=False)["input_ids"]
    assert dec._stop_hit(ids).strip() == "The pub."
    assert dec._stop_hit(bb.tokenizer("\n\nThe pub.", add_special_tokens=False)["input_ids"]) is None


def _repeats(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_repeat_ngram_size_ends_loops(strategy):
    bb, rw, ids = _setup()
    plain = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=40, strategy=strategy, num_beams=2)).generate_ids(ids)
    assert any(_repeats(g.token_ids, 2) for g in plain)  # random tiny models loop: the check below can fail
    fixed = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=40, strategy=strategy, num_beams=2,
                                                    no_repeat_ngram_size=2)).generate_ids(ids)
    assert not any(_repeats(g.token_ids, 2) for g in fixed)
    # only generated n-grams count: a size longer than any output bans nothing
    longer = Decoder(bb, rw, config=GenerationConfig(max_new_tokens=40, strategy=strategy, num_beams=2,
                                                     no_repeat_ngram_size=45)).generate_ids(ids)
    assert [g.token_ids for g in longer] == [g.token_ids for g in plain]
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        GenerationConfig(no_repeat_ngram_size=-1)



@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_decoding_under_several_rules_at_once_matches_one_decode_per_rule(penalty):
    from logitplug.combine import SupportProductRule
    from logitplug.train import at_strength

    bb, rw, ids = _setup()
    ids = ids + [ids[0][:3], ids[2] + ids[1]]  # uneven lengths: two batches of 3 and 2
    support = SupportProductRule(k=5)
    rules = [at_strength(support, a) for a in (0.0, 0.5, 1.0, 1.5)] + [ProductRule(), BlackBoxOnly()]
    cfg = GenerationConfig(max_new_tokens=12, repetition_penalty=penalty, batch_size=3)
    together = Decoder(bb, rw, support, cfg).generate_ids_many(ids, rules)
    apart = [Decoder(bb, rw, r, cfg).generate_ids(ids) for r in rules]
    assert [[g.token_ids for g in out] for out in together] == [[g.token_ids for g in out] for out in apart]
    assert len({tuple(map(tuple, (g.token_ids for g in out))) for out in apart}) > 2  # the rules do differ
