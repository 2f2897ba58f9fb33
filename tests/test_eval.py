import pytest

from logitplug.eval import (
    bleu, cider, e2e_slot_errors, evaluate, meteor, nist, parse_mr, rouge_1, rouge_2, rouge_l, slot_error_rate,
)

HYP = ["the cat sat on the mat", "a dog runs in the park"]
REFS = [["the cat sat on the mat", "a cat was sitting on the mat"], ["a dog is running in the park"]]


def test_perfect_match_scores_top_marks():
    refs = [[h] for h in HYP]
    assert bleu(HYP, refs).score == pytest.approx(100.0)
    for metric in (rouge_1, rouge_2, rouge_l):
        assert metric(HYP, refs).score == pytest.approx(100.0)
    assert meteor(HYP, refs).score > 95
    assert nist(HYP, refs).score > nist(["the dog", "a cat"], refs).score


def test_multiple_references_take_the_best_one():
    # the second reference matches exactly: ROUGE is max over references
    assert rouge_l(["a cat was sitting on the mat"], [["a dog ran", "a cat was sitting on the mat"]]).score == 100.0
    # BLEU with an extra matching reference can only go up
    one = bleu(["the cat is on the mat"], [["there is a cat on the mat"]]).score
    two = bleu(["the cat is on the mat"], [["there is a cat on the mat", "the cat is on the mat"]]).score
    assert two > one


def test_empty_output_scores_zero_and_does_not_crash():
    refs = [["the cat sat on the mat"]]
    assert bleu([""], refs).score == 0.0
    assert rouge_l([""], refs).score == 0.0
    assert nist([""], refs).score == 0.0
    assert meteor([""], refs).score < 5
    assert cider(["", "a dog runs"], [["the cat sat"], ["a dog runs"]]).per_item[0] == 0.0


def test_cider_prefers_the_matching_output():
    refs = [["a man rides a horse on the beach", "a person riding a horse by the sea"],
            ["two dogs play with a ball", "dogs playing with a red ball"],
            ["a woman cooks pasta in a kitchen", "someone is cooking pasta"]]
    good = cider(["a man riding a horse on the beach", "two dogs playing with a ball", "a woman cooking pasta"], refs)
    bad = cider(["a cat sleeps", "the sky is blue", "cars on a road"], refs)
    assert good.score > 1.0 > bad.score


def test_evaluate_and_errors():
    scores = evaluate(HYP, REFS, ["BLEU", "ROUGE-L"])
    assert set(scores) == {"BLEU", "ROUGE-L"} and "13a" in scores["BLEU"].signature
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(HYP, REFS, ["BLEURT"])
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        bleu(HYP, REFS[:1])
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l(["x"], [[]])


def test_a_metric_mix_names_its_metrics_and_rejects_unknown_ones():
    from logitplug.eval import metric_names

    assert metric_names("BLEU") == ("BLEU",)
    assert metric_names("BLEU+METEOR+ROUGE-L+CIDEr") == ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
    with pytest.raises(ValueError, match="BLEURT"):
        metric_names("BLEU+BLEURT")


def test_slot_errors_on_handmade_outputs():
    mr = "name[The Eagle], eatType[coffee shop], food[French], priceRange[cheap], area[riverside], familyFriendly[yes], near[Burger King]"
    assert parse_mr(mr)["priceRange"] == "cheap"
    perfect = "The Eagle is a cheap, family friendly coffee shop serving French food by the riverside near Burger King."
    err = e2e_slot_errors(mr, perfect)
    assert err.missing == () and err.hallucinated == () and err.total_slots == 7
    omits = "The Eagle is a coffee shop near Burger King."
    err = e2e_slot_errors(mr, omits)
    assert set(err.missing) == {"food=French", "priceRange=cheap", "area=riverside", "familyFriendly=yes"}
    invents = "The Eagle is an expensive Italian coffee shop in the city centre near Burger King, next to Zizzi."
    err = e2e_slot_errors(mr, invents, known_names=["Zizzi", "The Eagle", "Burger King"])
    assert {"food=Italian", "area=city centre", "name=Zizzi"} <= set(err.hallucinated)
    assert "priceRange=cheap" in err.missing  # a wrong graded value counts once, as missing
    added = e2e_slot_errors("name[Aromi], eatType[pub]", "Aromi is an expensive pub with a high customer rating.")
    assert set(added.hallucinated) == {"priceRange=high", "customer rating=high"} and added.missing == ()
    # words inside venue names are not attributes
    assert e2e_slot_errors("name[Cotto], near[Café Rouge]", "Cotto is near Café Rouge.").hallucinated == ()
    negated = e2e_slot_errors("name[Aromi], familyFriendly[no]", "Aromi is not family-friendly.")
    assert negated.missing == () and negated.hallucinated == ()
    wrong_polarity = e2e_slot_errors("name[Aromi], familyFriendly[no]", "Aromi is family-friendly.")
    assert wrong_polarity.missing == ("familyFriendly=no",)


def test_slot_error_rate_counts_over_all_slots():
    mrs = ["name[Aromi], eatType[pub]", "name[Cotto], food[Indian]"]
    assert slot_error_rate(["Aromi is a pub.", "Cotto serves Indian food."], mrs).score == 0.0
    ser = slot_error_rate(["Aromi is a pub.", "Cotto serves Chinese food."], mrs)
    assert ser.score == pytest.approx(100 * 2 / 4)  # food=Indian missing + food=Chinese invented, of 4 slots


def test_missing_java_is_reported_clearly(monkeypatch):
    import logitplug.eval as ev

    monkeypatch.setattr(ev.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="need Java.*apt-get install"):
        meteor(["a"], [["a"]])
