import json

import pytest

from logitplug.data import (
    DataError, Example, PromptTemplate, collate, encode_all, encode_example, get_template, group_by_input,
    load_table, split_by_input, targets_of,
)
from tiny import tiny_tokenizer

TEMPLATE = PromptTemplate("t", "Attributes: {input}\nSentence:")


def test_collate_keeps_eos_target_even_when_pad_equals_eos():
    tok = tiny_tokenizer()
    enc = encode_example(tok, TEMPLATE, Example("name[Aromi]", "Aromi is a coffee shop."), 64)
    assert enc.input_ids[-1] == tok.eos_token_id
    batch = collate([enc, encode_example(tok, TEMPLATE, Example("x", "Aromi."), 64)], pad_id=tok.eos_token_id)
    targets = targets_of(batch)
    n_first = len(enc.input_ids) - enc.prompt_len
    assert targets[:n_first].tolist() == list(enc.input_ids[enc.prompt_len:])
    assert targets[n_first - 1] == tok.eos_token_id
    assert int(batch["target_mask"].sum()) == len(targets)


def test_prompt_and_target_tokenized_separately_like_generation():
    tok = tiny_tokenizer()
    enc = encode_example(tok, TEMPLATE, Example("name[Aromi]", "Aromi is nice."), 64)
    prompt = tok(TEMPLATE.render("name[Aromi]"))["input_ids"]
    assert list(enc.input_ids[: enc.prompt_len]) == prompt


def test_long_prompt_is_cut_from_the_left_with_warning(caplog):
    tok = tiny_tokenizer()
    enc = encode_example(tok, TEMPLATE, Example("Aromi " * 200, "Aromi."), 40)
    assert len(enc.input_ids) == 40
    assert "truncated from the left" in caplog.text


def test_bad_targets_and_empty_data_are_refused():
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="row 1: target tokenizes to nothing"):
        encode_all(tok, TEMPLATE, [Example("a", "b"), Example("a", "  ")], 64)
    with pytest.raises(DataError, match="no training examples"):
        encode_all(tok, TEMPLATE, [], 64)
    with pytest.raises(DataError, match="does not fit"):
        encode_example(tok, TEMPLATE, Example("a", "Aromi " * 100), 20)


def test_load_table_csv_jsonl_and_errors(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("mr,ref\nA,x\nB,y\n")
    rows = load_table(csv_path, "mr", "ref")
    assert rows == [Example("A", "x"), Example("B", "y")]
    with pytest.raises(DataError, match=r"missing column\(s\) \['input'\].*\['mr', 'ref'\]"):
        load_table(csv_path, "input", "ref")
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"input": "q", "target": "a"}) + "\n")
    assert load_table(jl) == [Example("q", "a")]
    empty = tmp_path / "e.csv"
    empty.write_text("input,target\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_table(empty)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_table(tmp_path / "missing.csv")


def test_split_and_grouping_by_input():
    rows = [Example(f"in{i % 10}", f"t{i}") for i in range(40)]
    a, b = split_by_input(rows, 0.6, seed=3)
    assert len(a) + len(b) == 40
    assert not {r.input for r in a} & {r.input for r in b}
    assert len({r.input for r in a}) == 6
    assert split_by_input(rows, 0.6, seed=3) == (a, b)
    grouped = group_by_input(rows)
    assert len(grouped) == 10 and all(len(g.references) == 4 for g in grouped)


def test_split_can_keep_rows_that_share_a_target_on_one_side():
    # one description for several inputs (a product in several colours), and one input with two descriptions
    rows = [Example(f"item{i} | colour{c}", f"text{i // 2}") for i in range(20) for c in range(3)]
    rows.append(Example("item0 | colour0", "another text"))
    rows.append(Example("lone item", "text3"))  # joins the group of items 6 and 7 through its target
    a, b = split_by_input(rows, 0.5, seed=1, same_target_together=True)
    assert len(a) + len(b) == len(rows) and a and b
    assert not {r.target for r in a} & {r.target for r in b}
    assert not {r.input for r in a} & {r.input for r in b}
    assert split_by_input(rows, 0.5, seed=1, same_target_together=True) == (a, b)
    # where no target is shared, the split is the one by input alone (user tables keep their splits)
    plain = [Example(f"in{i % 10}", f"t{i}") for i in range(40)]
    assert split_by_input(plain, 0.6, seed=3, same_target_together=True) == split_by_input(plain, 0.6, seed=3)
    # by input alone, the shared descriptions land on both sides
    a, b = split_by_input(rows, 0.5, seed=1)
    assert {r.target for r in a} & {r.target for r in b}


def test_templates():
    assert get_template("e2e").name == "e2e"
    with pytest.raises(ValueError, match="unknown prompt template"):
        get_template("nonsense")
    assert get_template("Q: {input}\\nA:").render("x") == "Q: x\nA:"


def test_demonstrations_come_before_the_prompt_in_raw_and_chat_templates():
    from logitplug.data import TEMPLATES
    from tiny import tiny_tokenizer

    demo = Example("dog, ball", "The dog plays with a ball.")
    raw = TEMPLATES["commongen"].render_with_demos("cat, mat", [demo])
    assert raw == TEMPLATES["commongen"].render("dog, ball") + " The dog plays with a ball.\n\n" + TEMPLATES["commongen"].render("cat, mat")
    assert TEMPLATES["commongen"].render_with_demos("cat, mat", []) == TEMPLATES["commongen"].render("cat, mat")
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    chat = TEMPLATES["commongen-chat"].render_with_demos("cat, mat", [demo], tok)
    assert chat.count("<user>") == 2 and "<assistant>The dog plays with a ball.<user>" in chat and chat.endswith("<assistant>")


def test_fixed_demonstrations_travel_with_the_template_and_survive_json():
    import json
    from dataclasses import asdict

    from logitplug.data import TEMPLATES, PromptTemplate

    demo = Example("dog, ball", "The dog plays with a ball.")
    fixed = TEMPLATES["commongen"].with_demonstrations([demo])
    assert fixed.name == "commongen+1shot" and fixed.render("cat, mat") == TEMPLATES["commongen"].render_with_demos("cat, mat", [demo])
    back = PromptTemplate(**json.loads(json.dumps(asdict(fixed))))  # as a plugin's sidecar stores it
    assert back == fixed and back.render("cat, mat") == fixed.render("cat, mat")
    with pytest.raises(ValueError, match="need targets"):
        TEMPLATES["commongen"].with_demonstrations([Example("a", None)])
    # what a server prepends: the head, so that a client's bare task prompt reads as in training
    assert fixed.demo_head() + TEMPLATES["commongen"].render("cat, mat") == fixed.render("cat, mat")
    assert fixed.demo_head().endswith("The dog plays with a ball.\n\n")
    chat = TEMPLATES["commongen-chat"].with_demonstrations([demo])
    assert chat.demo_messages()[1] == {"role": "assistant", "content": "The dog plays with a ball."}
    with pytest.raises(ValueError, match="chat template"):
        chat.demo_head()


def test_encode_all_reports_truncation_once_with_a_count(caplog):
    tok = tiny_tokenizer()
    rows = [Example("Aromi " * 200, "Aromi.")] * 5 + [Example("name[Aromi]", "Aromi.")]
    enc = encode_all(tok, TEMPLATE, rows, 40)
    assert all(len(e.input_ids) <= 40 for e in enc)
    lines = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(lines) == 1 and "5 of 6 prompts" in lines[0].getMessage()
