import random

import pytest
from tiny_runs import run_script

from spinn.data import listops
from spinn.data.listops import ListExpr
from spinn.errors import SpinnError
from spinn.transitions import parse_to_transitions, transitions_to_parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[MAX 2 9 ]", 9),
        ("[MIN 4 7 1 ]", 1),
        ("[SM 5 7 9 ]", 1),  # 21 mod 10
        ("[MED 3 1 2 ]", 2),
        ("[MED 1 2 8 9 ]", 5),  # (2 + 8) / 2
        ("[MED 1 2 ]", 1),  # 1.5 rounded down
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[SM [MAX 8 9 ] [MED 7 7 ] 5 ]", 1),  # 9 + 7 + 5 = 21
        ("[MIN [SM 9 9 ] [MAX 1 [MIN 6 3 ] ] ]", 3),  # min(8, 3)
    ],
)
def test_evaluator_on_hand_examples(text, expected):
    assert listops.evaluate_tokens(text.split()) == expected


def test_the_released_bracketing_reads_as_its_value():
    words, transitions = parse_to_transitions("( ( ( [MAX 2 ) 9 ) ] )")
    assert words == ["[MAX", "2", "9", "]"] and listops.evaluate_tokens(words) == 9


@pytest.mark.parametrize("text", ["[MAX 2 9", "[MAX 2 ] ]", "[MAX 2 x ]", "[FIRST 1 2 ]", "1 2", "[MIN ]"])
def test_evaluator_refuses_malformed_expressions(text):
    with pytest.raises(SpinnError):
        listops.evaluate_tokens(text.split())


def test_binary_parse_is_left_branching_per_list():
    expr = ListExpr(listops.MAX, (2, ListExpr(listops.MIN, (4, 7)), 0))
    parse = listops.binary_parse(expr)
    assert parse == "( ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    words, transitions = parse_to_transitions(parse)
    assert words == listops.tokens_of(expr)
    assert transitions_to_parse(words, transitions) == parse


def test_generated_parses_round_trip_and_carry_their_values():
    rng = random.Random(3)
    for label, parse in listops.examples(300, rng):
        words, transitions = parse_to_transitions(parse)
        assert transitions_to_parse(words, transitions) == parse
        assert listops.evaluate_tokens(words) == label
        assert words[0] in listops.OPERATORS and words[-1] == listops.END


def depth(expr):
    return 1 + max((depth(a) for a in expr.args if isinstance(a, ListExpr)), default=0)


def test_depth_and_arguments_stay_within_bounds():
    rng = random.Random(0)
    exprs = [listops.generate(rng, max_depth=4) for _ in range(2000)]
    assert max(depth(e) for e in exprs) == 3  # lists at depths 1-3; at depth 4 only digits

    def arities(e):
        yield len(e.args)
        for a in e.args:
            if isinstance(a, ListExpr):
                yield from arities(a)

    seen = {n for e in exprs for n in arities(e)}
    assert seen == {2, 3, 4, 5}
    assert {e.op for e in exprs} == set(listops.OPERATORS)


def test_labels_cover_all_ten_digits():
    labels = {label for label, _ in listops.examples(2000, random.Random(1))}
    assert labels == set(range(10))


def test_splits_are_deterministic_by_seed_and_capped(tmp_path):
    sizes = {"train": 200, "dev": 20, "test": 30}
    a = listops.write_splits(tmp_path / "a", seed=5, sizes=sizes, max_length=30)
    b = listops.write_splits(tmp_path / "b", seed=5, sizes=sizes, max_length=30)
    c = listops.write_splits(tmp_path / "c", seed=6, sizes=sizes, max_length=30)
    for name, n in sizes.items():
        text = a[name].read_text(encoding="utf-8")
        assert text == b[name].read_text(encoding="utf-8")
        assert text != c[name].read_text(encoding="utf-8")
        rows = text.splitlines()
        assert len(rows) == n
        for row in rows:
            label, parse = row.split("\t")
            words, _ = parse_to_transitions(parse)
            assert len(words) <= 30 and int(label) == listops.evaluate_tokens(words)
    uncapped = listops.examples(2000, random.Random(5))
    assert max(len(parse_to_transitions(p)[0]) for _, p in uncapped) > 30  # the cap did something


@pytest.mark.slow
def test_command_writes_the_files_and_refuses_bad_sizes(tmp_path):
    out = tmp_path / "listops"
    cmd = ["-m", "spinn.data.listops", "--out", str(out), "--train", "50", "--dev", "5"]
    done = run_script(*cmd, "--test", "7", "--max-length", "40")
    assert done.returncode == 0, done.stderr
    assert [len((out / f"{n}.tsv").read_text().splitlines()) for n in ("train", "dev", "test")] == [50, 5, 7]
    bad = run_script(*cmd, "--max-length", "3")
    assert bad.returncode == 2 and "--max-length" in bad.stderr and bad.stderr.count("\n") == 1
