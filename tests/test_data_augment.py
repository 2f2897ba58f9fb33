import os
import pytest

from logitplug.data import Example
from logitplug.data.augment import augment_copied_names, copied_names, substitute_names


def test_copied_names_are_capitalized_runs_the_target_repeats():
    ex = Example("name[Blue Spice], food[Chinese], near[Burger King]", "Blue Spice serves Chinese food.")
    assert copied_names(ex) == ["Blue Spice", "Chinese"]  # longest first; Burger King is not in the target
    assert copied_names(Example("dog, frisbee, catch", "The dog catches a frisbee.")) == []  # lower-case concepts


def test_substitution_is_consistent_in_input_and_target_and_keeps_the_rest():
    import random

    ex = Example("name[Blue Spice], near[The Mill]", "Blue Spice is near The Mill. Blue Spice is cheap.")
    out = substitute_names(ex, random.Random(0))
    assert "Blue Spice" not in out.input + out.target and "The Mill" not in out.input + out.target
    new_name = out.input.split("[")[1].split("]")[0]
    assert out.target.count(new_name) == 2 and out.target.endswith("is cheap.")
    assert out.input.startswith("name[") and ", near[" in out.input


def test_fraction_and_seed_control_which_rows_change():
    rows = [Example(f"name[Venue{i}]", f"Venue{i} is a pub.") for i in range(200)]
    assert augment_copied_names(rows, 0.0, 0) == rows
    half = augment_copied_names(rows, 0.5, 0)
    changed = sum(a != b for a, b in zip(rows, half))
    assert 60 < changed < 140
    assert half == augment_copied_names(rows, 0.5, 0) and half != augment_copied_names(rows, 0.5, 1)
    with pytest.raises(ValueError, match="fraction"):
        augment_copied_names(rows, 1.5, 0)


def test_renamed_held_out_inputs_rename_a_name_in_the_input_and_every_reference_alike():
    from logitplug.data.augment import rename_held_out

    ex = Example("name[Blue Spice], near[Burger King], food[Chinese]", None,
                 ("Blue Spice is near Burger King.", "Try Blue Spice.", "A Chinese place."))
    (out,) = rename_held_out([ex], 1.0, seed=3)
    new = out.input.split("[")[1].split("]")[0]
    assert new != "Blue Spice" and "Blue Spice" not in " ".join(out.references)
    assert out.references[0].startswith(new) and out.references[1] == f"Try {new}."
    # every name some reference repeats is renamed, each to one pseudo-name everywhere
    assert "Burger King" not in out.input + out.references[0] and "Chinese" not in out.input + out.references[2]
    assert out.references[2].endswith("place.") and out.target is None
    rows = [Example(f"name[Venue{i}]", None, (f"Venue{i} is a pub.",)) for i in range(200)]
    assert rename_held_out(rows, 0.0, 0) == rows
    half = rename_held_out(rows, 0.5, 0)
    assert 60 < sum(a != b for a, b in zip(rows, half)) < 140 and half == rename_held_out(rows, 0.5, 0)
    with pytest.raises(ValueError, match="fraction"):
        rename_held_out(rows, -0.1, 0)


def _pieces(word: str, syllables) -> bool:
    """Whether ``word`` (lower-cased) splits into a sequence of ``syllables``."""
    word = word.lower()
    return not word or any(word.startswith(s) and _pieces(word[len(s):], syllables) for s in syllables)


def test_held_out_pseudo_names_are_made_of_syllables_training_never_uses():
    """Training's pseudo-names become vocabulary for the plugin; held-out renaming must look new to
    it, as a test split's new names do (session 21), so the two inventories share no syllable."""
    from logitplug.data.augment import HELD_OUT_SYLLABLES, TRAINING_SYLLABLES, rename_held_out

    assert not set(HELD_OUT_SYLLABLES) & set(TRAINING_SYLLABLES)
    rows = [Example(f"name[Venue{i}]", None, (f"Venue{i} is a pub.",)) for i in range(30)]
    held_out = [r.input[5:-1] for r in rename_held_out(rows, 1.0, 0)]
    trained = [r.input[5:-1] for r in augment_copied_names([replace_target(r) for r in rows], 1.0, 0)]
    assert all(_pieces(n, HELD_OUT_SYLLABLES) and not _pieces(n, TRAINING_SYLLABLES) for n in held_out)
    assert all(_pieces(n, TRAINING_SYLLABLES) for n in trained)
    # the older inventory on request (benchmarks/renamed_heldout.py compares the two)
    old = [r.input[5:-1] for r in rename_held_out(rows, 1.0, 0, TRAINING_SYLLABLES)]
    assert all(_pieces(n, TRAINING_SYLLABLES) for n in old)


def replace_target(row: Example) -> Example:
    """A held-out row as a training row: its first reference as the target."""
    return Example(row.input, row.references[0])


def test_renaming_is_the_same_in_every_process():
    """Names of equal length were renamed in set order, which follows each process's string hashing:
    two processes gave the same held-out rows other pseudo-names, and their choices did not compare."""
    import subprocess
    import sys

    code = ("from logitplug.data import Example; from logitplug.data.augment import rename_held_out, augment_copied_names;"
            "rows = [Example('Garux | language | Fey language ; Abc | x | Garux', 'Garux and Abc speak Fey.',"
            " ('Garux and Abc speak Fey.',))] * 5;"
            "print([r.input for r in rename_held_out(rows, 1.0, 0)], [r.input for r in augment_copied_names(rows, 1.0, 0)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(outs) == 1
