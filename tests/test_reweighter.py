import pytest
import torch

from logitplug.reweighter import Reweighter, ReweighterConfig, TokenizerMismatchError
from tiny import tiny_blackbox

SMALL = dict(hidden_size=32, num_heads=2, intermediate_size=64)


def test_save_load_round_trip_gives_same_model(tmp_path):
    bb = tiny_blackbox()
    rw = Reweighter.build(ReweighterConfig(num_layers=2, **SMALL), bb.vocab_size, bb.tokenizer, seed=1)
    rw.save_pretrained(tmp_path / "p", bb.fingerprint, {"note": "x"})
    back = Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint)
    assert back.config == rw.config
    ids = torch.randint(0, bb.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    assert torch.equal(rw(ids, mask), back(ids, mask))
    assert {p.name for p in (tmp_path / "p").iterdir()} >= {"model.safetensors", "reweighter_config.json", "logitplug.json", "README.md"}


def test_plugin_for_another_tokenizer_is_refused(tmp_path):
    bb = tiny_blackbox()
    other = tiny_blackbox(vocab_size=300, identity="other-bb")
    rw = Reweighter.build(ReweighterConfig(**SMALL), bb.vocab_size, bb.tokenizer)
    rw.save_pretrained(tmp_path / "p", bb.fingerprint)
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ"):
        Reweighter.from_pretrained(tmp_path / "p", other.fingerprint)
    with pytest.raises(FileNotFoundError, match="not a logitplug plugin folder"):
        Reweighter.from_pretrained(tmp_path / "nothing", bb.fingerprint)


def test_zero_init_head_starts_exactly_at_the_blackbox():
    bb = tiny_blackbox()
    rw = Reweighter.build(ReweighterConfig(zero_init_head=True, **SMALL), bb.vocab_size, bb.tokenizer)
    ids = torch.randint(0, bb.vocab_size, (1, 5))
    assert torch.count_nonzero(rw(ids, torch.ones_like(ids))) == 0


def test_selected_positions_match_full_forward():
    bb = tiny_blackbox()
    rw = Reweighter.build(ReweighterConfig(**SMALL), bb.vocab_size, bb.tokenizer)
    ids = torch.randint(0, bb.vocab_size, (2, 6))
    mask = torch.ones_like(ids)
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, 2], select[1, 4] = True, True
    assert torch.allclose(rw(ids, mask, select), rw(ids, mask)[select], atol=1e-6)


def test_config_checks():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ReweighterConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        ReweighterConfig(num_layers=0)


def test_init_from_a_pretrained_lm_with_the_same_tokenizer(tmp_path):
    bb = tiny_blackbox()
    bb.model.save_pretrained(tmp_path / "lm")
    rw = Reweighter.build(ReweighterConfig(init_from=str(tmp_path / "lm")), bb.vocab_size, bb.tokenizer)
    ids = torch.randint(0, bb.vocab_size, (1, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(rw(ids, mask), bb.model(input_ids=ids, attention_mask=mask).logits.float(), atol=1e-5)
    rw.save_pretrained(tmp_path / "p", bb.fingerprint)
    assert torch.equal(Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint)(ids, mask), rw(ids, mask))
    other = tiny_blackbox(vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="output tokens"):
        Reweighter.build(ReweighterConfig(init_from=str(tmp_path / "lm")), other.vocab_size, other.tokenizer)


def _decoding_agrees_with_teacher_forcing(rw, ids, mask, full, prefix: int, rows):
    """Incremental decoding (prefill of ``prefix`` tokens, one step) and gathered head rows ``rows``
    give the teacher-forced logits ``full``."""
    first, state = rw.start(ids[:, :prefix], mask[:, :prefix])
    torch.testing.assert_close(first, full[:, prefix - 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rw.step(state, ids[:, prefix]), full[:, prefix], atol=1e-5, rtol=1e-5)
    h, _ = rw.start_hidden(ids[:, :prefix], mask[:, :prefix])
    torch.testing.assert_close(rw.logits_for(h, rows), full[:, prefix - 1].gather(-1, rows), atol=1e-5, rtol=1e-5)


def test_gate_starts_at_the_plain_rule_learns_a_strength_and_survives_save_load(tmp_path):
    bb = tiny_blackbox()
    plain = Reweighter.build(ReweighterConfig(**SMALL), bb.vocab_size, bb.tokenizer, seed=3)
    gated = Reweighter.build(ReweighterConfig(gate=True, **SMALL), bb.vocab_size, bb.tokenizer, seed=3)
    ids = torch.randint(0, bb.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(gated(ids, mask), plain(ids, mask))  # strength exactly 1 at the start
    with torch.no_grad():
        gated.gate.weight.normal_()
        gated.gate.bias.fill_(0.3)
    hidden = torch.randn(4, 32)
    s = gated.strength(hidden)
    assert s.shape == (4, 1) and bool(((s > 0) & (s < 2)).all()) and not torch.allclose(s, torch.ones_like(s))
    full = gated(ids, mask)
    _decoding_agrees_with_teacher_forcing(gated, ids, mask, full, 5, torch.tensor([[1, 7, 9], [2, 3, 4]]))
    gated.save_pretrained(tmp_path / "g", bb.fingerprint)
    back = Reweighter.from_pretrained(tmp_path / "g", bb.fingerprint)
    assert torch.equal(back(ids, mask), full)
    plain.save_pretrained(tmp_path / "p", bb.fingerprint)
    import json

    cfg = json.loads((tmp_path / "p" / "reweighter_config.json").read_text())
    cfg["gate"] = True
    (tmp_path / "p" / "reweighter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gate"):
        Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint)


def test_copy_feature_marks_prompt_tokens_and_teacher_forcing_equals_decoding(tmp_path):
    bb = tiny_blackbox()
    plain = Reweighter.build(ReweighterConfig(**SMALL), bb.vocab_size, bb.tokenizer, seed=4)
    copy = Reweighter.build(ReweighterConfig(copy_feature=True, **SMALL), bb.vocab_size, bb.tokenizer, seed=4)
    ids = torch.tensor([[5, 9, 9, 17, 40, 41, 42], [7, 8, 30, 31, 32, 33, 0]])
    mask = torch.tensor([[1] * 7, [1] * 6 + [0]])
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, 3:6] = True  # prompt = positions 0..3
    select[1, 1:5] = True  # prompt = positions 0..1
    prompt = Reweighter.prompt_tokens(ids, mask, select, bb.vocab_size)
    assert prompt[0].nonzero().flatten().tolist() == [5, 9, 17] and prompt[1].nonzero().flatten().tolist() == [7, 8]
    torch.testing.assert_close(copy(ids, mask, select), plain(ids, mask, select))  # zero bonus at the start
    with torch.no_grad():
        copy.copy.weight.normal_()
        copy.copy.bias.fill_(2.0)
    tf = copy(ids[:1], mask[:1], select[:1])  # positions 3, 4, 5 of row 0
    bonus = tf - plain(ids[:1], mask[:1], select[:1])
    assert bool((bonus[:, [5, 9, 17]].abs() > 0).all()) and bool((bonus[:, [40, 41, 42]] == 0).all())
    first, state = copy.start(ids[:1, :4], mask[:1, :4])
    torch.testing.assert_close(first[0], tf[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(copy.step(state, ids[:1, 4])[0], tf[1], atol=1e-5, rtol=1e-5)
    state.reorder(torch.tensor([0, 0]))
    two = copy.step(state, ids[0, 5].repeat(2))
    torch.testing.assert_close(two[1], tf[2], atol=1e-5, rtol=1e-5)
    copy.save_pretrained(tmp_path / "c", bb.fingerprint)
    back = Reweighter.from_pretrained(tmp_path / "c", bb.fingerprint)
    assert torch.equal(back(ids, mask, select), copy(ids, mask, select)) and not back.supports_sparse


def test_unseen_tokens_share_one_level_everywhere_and_survive_save_load(tmp_path):
    bb = tiny_blackbox()
    rw = Reweighter.build(ReweighterConfig(neutral_unseen=True, **SMALL), bb.vocab_size, bb.tokenizer, seed=5)
    known = torch.tensor([3, 7, 9, 40])
    rw.unseen.seen[known] = True
    with torch.no_grad():
        rw.unseen.level.weight.normal_()
        rw.unseen.level.bias.fill_(0.7)
    ids = torch.tensor([[5, 9, 3, 17, 40, 41], [7, 8, 30, 31, 32, 33]])
    mask = torch.ones_like(ids)
    full = rw(ids, mask)
    others = torch.ones(bb.vocab_size, dtype=torch.bool)
    others[known] = False
    # every unknown token has the same logit at a position, and it is not the head's own
    assert torch.allclose(full[..., others], full[..., others][..., :1].expand_as(full[..., others]))
    head = rw.lm(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(full[..., known], head[..., known], atol=1e-5)
    assert not torch.allclose(full[..., others], head[..., others])
    _decoding_agrees_with_teacher_forcing(rw, ids, mask, full, 4, torch.tensor([[3, 17, 9], [40, 2, 41]]))
    rw.save_pretrained(tmp_path / "u", bb.fingerprint)
    back = Reweighter.from_pretrained(tmp_path / "u", bb.fingerprint)
    assert torch.equal(back.unseen.seen, rw.unseen.seen) and torch.equal(back(ids, mask), full)


def test_token_evidence_counts_distinct_inputs_not_rows():
    from logitplug.reweighter.model import token_evidence

    # token 2: two references of one input (one input); 1: three inputs; 3 and 4: one input each; 5: two
    targets = [[1, 2], [1, 2, 5], [1, 3], [4, 5], [1]]
    inputs = ["a", "a", "b", "c", "d"]
    assert token_evidence(targets, inputs, 8).nonzero().flatten().tolist() == [1, 5]
    assert token_evidence(targets, inputs, 8, min_inputs=1).nonzero().flatten().tolist() == [1, 2, 3, 4, 5]


def test_token_vectors_from_a_pretrained_lm_are_frozen_and_saved_once(tmp_path):
    bb = tiny_blackbox()
    bb.model.save_pretrained(tmp_path / "lm")
    table = bb.model.get_input_embeddings().weight.detach()
    rw = Reweighter.build(ReweighterConfig(token_vectors_from=str(tmp_path / "lm"), **SMALL), bb.vocab_size, bb.tokenizer)
    assert torch.equal(rw.lm.get_input_embeddings().table, table)
    trainable = {n for n, p in rw.named_parameters() if p.requires_grad}
    assert not any("table" in n for n in trainable)  # the pretrained vectors never move
    assert {"lm.lm_head.proj.weight", "lm.model.embed_tokens.proj.weight"} <= trainable
    ids = torch.randint(0, bb.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    full = rw(ids, mask)
    # the output logits are the projected hidden state against the pretrained table
    hidden = rw.lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(full, rw.lm.lm_head.proj(hidden) @ table.T)
    rows = torch.randint(0, bb.vocab_size, (2, 5))
    _decoding_agrees_with_teacher_forcing(rw, ids, mask, full, 4, rows)
    rw.save_pretrained(tmp_path / "p", bb.fingerprint)
    back = Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint)
    assert torch.equal(back(ids, mask), full)
    from safetensors.torch import load_file

    # the table goes by reference (read again from its source, pinned by a hash), not in the file
    assert not any(v.shape == table.shape for v in load_file(str(tmp_path / "p" / "model.safetensors")).values())


def test_a_token_vector_plugin_reads_its_table_again_and_refuses_another(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bb = tiny_blackbox()
    bb.model.save_pretrained(tmp_path / "lm")
    rw = Reweighter.build(ReweighterConfig(token_vectors_from=str(tmp_path / "lm"), **SMALL), bb.vocab_size, bb.tokenizer)
    ids = torch.randint(0, bb.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    full = rw(ids, mask)
    rw.save_pretrained(tmp_path / "p", bb.fingerprint)
    shutil.move(tmp_path / "lm", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="token_vectors=NAME_OR_FOLDER"):
        Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint)
    back = Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint, token_vectors=str(tmp_path / "moved"))
    assert torch.equal(back(ids, mask), full)
    tiny_blackbox(seed=1).model.save_pretrained(tmp_path / "other")  # same tokenizer, other vectors
    with pytest.raises(TokenizerMismatchError, match="differ"):
        Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint, token_vectors=str(tmp_path / "other"))
    # a plugin saved when the table travelled in its weights file still loads, without its source
    state = load_file(str(tmp_path / "p" / "model.safetensors"))
    state["model.embed_tokens.table"] = bb.model.get_input_embeddings().weight.detach().clone()
    save_file(state, str(tmp_path / "p" / "model.safetensors"))
    shutil.rmtree(tmp_path / "moved")
    assert torch.equal(Reweighter.from_pretrained(tmp_path / "p", bb.fingerprint)(ids, mask), full)


def test_token_vectors_need_the_blackbox_tokenizer_and_a_model(tmp_path):
    bb = tiny_blackbox()
    bb.model.save_pretrained(tmp_path / "lm")
    other = tiny_blackbox(vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="black box's tokenizer"):
        Reweighter.build(ReweighterConfig(token_vectors_from=str(tmp_path / "lm"), **SMALL), other.vocab_size, other.tokenizer)
    with pytest.raises(FileNotFoundError, match="registered black box name"):
        Reweighter.build(ReweighterConfig(token_vectors_from=str(tmp_path / "none"), **SMALL), bb.vocab_size, bb.tokenizer)
    with pytest.raises(ValueError, match="not both"):
        ReweighterConfig(token_vectors_from="x", init_from="y")


def test_token_vectors_are_read_alone_from_safetensors_or_else_from_the_whole_model(tmp_path):
    from logitplug.reweighter.model import _embedding_tensor, pretrained_token_vectors

    bb = tiny_blackbox()
    table = bb.model.get_input_embeddings().weight.detach()
    bb.model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")  # an index and several files
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert torch.equal(_embedding_tensor(tmp_path / "sharded"), table)
    bb.model.save_pretrained(tmp_path / "single")
    (tmp_path / "single" / "model.safetensors").rename(tmp_path / "single" / "other.safetensors")
    assert _embedding_tensor(tmp_path / "single") is None  # an unexpected layout: the whole model is loaded
    with pytest.raises(FileNotFoundError, match="no loadable model weights"):
        pretrained_token_vectors(str(tmp_path / "single"))
    bb.model.save_pretrained(tmp_path / "plain")
    assert torch.equal(pretrained_token_vectors(str(tmp_path / "plain")), table)


def test_a_logit_sum_decodes_as_its_members_weighted():
    from logitplug.combine import SupportProductRule
    from logitplug.decode import Decoder, GenerationConfig
    from logitplug.reweighter import LogitSum

    bb = tiny_blackbox()
    one = Reweighter.build(ReweighterConfig(**SMALL), bb.vocab_size, bb.tokenizer, seed=1)
    two = Reweighter.build(ReweighterConfig(**SMALL), bb.vocab_size, bb.tokenizer, seed=2)
    for layer in (one, two):  # a head whose votes move the text, by an amount that depends on its weight
        torch.nn.init.normal_(layer.lm.lm_head.weight, std=0.05)
    # one member at weight a through strength 1 is that member at strength a, repetition penalty included
    gen = GenerationConfig(max_new_tokens=8, repetition_penalty=1.3)
    prompts = [[5, 6, 7, 8], [9, 10]]
    alone = Decoder(bb, one, SupportProductRule(k=6, alpha=0.6), gen).generate_ids(prompts)
    summed = Decoder(bb, LogitSum([one], [0.6]), SupportProductRule(k=6, alpha=1.0), gen).generate_ids(prompts)
    assert [g.token_ids for g in summed] == [g.token_ids for g in alone]
    full = Decoder(bb, one, SupportProductRule(k=6, alpha=1.0), gen).generate_ids(prompts)
    assert [g.token_ids for g in full] != [g.token_ids for g in alone]  # the weight is what made them agree
    # two members: the weighted sum of their logits, teacher-forced and step by step alike
    both = LogitSum([one, two], [0.25, 0.75])
    ids = torch.randint(0, bb.vocab_size, (2, 6))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(both(ids, mask), 0.25 * one(ids, mask) + 0.75 * two(ids, mask))
    first, state = both.start(ids[:, :4], mask[:, :4])
    torch.testing.assert_close(first, both(ids[:, :4], mask[:, :4])[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.step(state, ids[:, 4]), both(ids[:, :5], mask[:, :5])[:, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2 members but 1 weights"):
        LogitSum([one, two], [1.0])
    with pytest.raises(ValueError, match="at least one member"):
        LogitSum([], [])
