import pytest
from hypothesis import given
from hypothesis import strategies as st

from spinn.errors import ParseError
from spinn.transitions import (
    PAD,
    REDUCE,
    SHIFT,
    balanced,
    left_branching,
    parse_to_transitions,
    right_branching,
    transitions_to_parse,
    validate_transitions,
)

CHURCH = "( ( The church ) ( ( has ( cracks ( in ( the ceiling ) ) ) ) . ) )"


def test_issue_example_gives_words_and_paper_transitions():
    tokens, trans = parse_to_transitions(CHURCH)
    assert tokens == ["The", "church", "has", "cracks", "in", "the", "ceiling", "."]
    S, R = SHIFT, REDUCE
    assert trans == [S, S, R, S, S, S, S, S, R, R, R, R, S, R, R]
    assert trans.count(SHIFT) == 8 and trans.count(REDUCE) == 7


def test_round_trip_rebuilds_the_parse():
    assert transitions_to_parse(*parse_to_transitions(CHURCH)) == CHURCH


def test_single_word_is_one_shift():
    assert parse_to_transitions("dog") == (["dog"], [SHIFT])
    assert transitions_to_parse(["dog"], [SHIFT]) == "dog"


def test_brackets_of_the_text_are_words():
    tokens, _ = parse_to_transitions("( -LRB- ( a -RRB- ) )")
    assert tokens == ["-LRB-", "a", "-RRB-"]


@pytest.mark.parametrize(
    "unspaced",
    [
        "((The church) ((has (cracks (in (the ceiling)))) .))",
        "((The church)((has(cracks(in(the ceiling))))\t.))",
        " ( (The  church ) ((has (cracks (in (the ceiling))) ) .)) ",
    ],
)
def test_brackets_without_spaces_read_as_spaced_ones(unspaced):
    assert parse_to_transitions(unspaced) == parse_to_transitions(CHURCH)
    assert parse_to_transitions("(a b)") == (["a", "b"], [SHIFT, SHIFT, REDUCE])
    assert parse_to_transitions("(-LRB- (a -RRB-))")[0] == ["-LRB-", "a", "-RRB-"]


@pytest.mark.parametrize(
    ("parse", "fragment"),
    [
        ("(a b c)", "the bracket closed at item 5 has 3 children, expected 2"),
        ("((a) b)", "the bracket closed at item 4 has 1 children"),
        ("(a b) c", "2 top-level nodes"),
        ("(a b))", "at item 5 closes no bracket"),
        ("((a b)", "1 bracket\\(s\\) left open"),
        ("()", "has 0 children"),
        ("( a b ) )", "closes no bracket"),
        ("( ( a b )", "left open"),
        ("( a b c )", "has 3 children"),
        ("( ( a ) b )", "has 1 children"),
        ("( )", "has 0 children"),
        ("", "empty parse"),
        ("a b", "2 top-level nodes"),
        ("( a b ) c", "2 top-level nodes"),
    ],
)
def test_invalid_parse_says_what_is_wrong(parse, fragment):
    with pytest.raises(ParseError, match=fragment):
        parse_to_transitions(parse)


@pytest.mark.parametrize(
    ("transitions", "n", "fragment"),
    [
        ([SHIFT, REDUCE], None, "REDUCE at step 1 with 1 item"),
        ([REDUCE], None, "REDUCE at step 0 with 0 item"),
        ([SHIFT, SHIFT], None, "leave 2 items"),
        ([], None, "leave 0 items"),
        ([SHIFT, SHIFT, REDUCE], 3, "2 SHIFTs for 3 tokens"),
        ([SHIFT, PAD], None, "expected SHIFT"),
        ([SHIFT, 7], None, "found 7"),
    ],
)
def test_validate_transitions_rejects(transitions, n, fragment):
    with pytest.raises(ParseError, match=fragment):
        validate_transitions(transitions, n)


def test_transitions_to_parse_checks_its_input():
    with pytest.raises(ParseError, match="2 SHIFTs for 3 tokens"):
        transitions_to_parse(["a", "b", "c"], [SHIFT, SHIFT, REDUCE])


def test_fixed_trees_have_their_shapes():
    words = ["w1", "w2", "w3", "w4"]
    assert transitions_to_parse(words, left_branching(4)) == "( ( ( w1 w2 ) w3 ) w4 )"
    assert transitions_to_parse(words, right_branching(4)) == "( w1 ( w2 ( w3 w4 ) ) )"
    assert transitions_to_parse(words, balanced(4)) == "( ( w1 w2 ) ( w3 w4 ) )"
    assert transitions_to_parse(words[:3], balanced(3)) == "( ( w1 w2 ) w3 )"


@pytest.mark.parametrize("tree", [left_branching, right_branching, balanced])
def test_fixed_trees_are_valid_for_every_length(tree):
    for n in range(1, 40):
        validate_transitions(tree(n), n)
    with pytest.raises(ParseError, match="at least one word"):
        tree(0)


@st.composite
def valid_transitions(draw):
    """A uniformly chosen SHIFT/REDUCE step wherever both are legal."""
    n = draw(st.integers(1, 30))
    out, depth, shifts = [], 0, 0
    while shifts < n or depth > 1:
        can_shift, can_reduce = shifts < n, depth >= 2
        if can_shift and (not can_reduce or draw(st.booleans())):
            out.append(SHIFT)
            depth, shifts = depth + 1, shifts + 1
        else:
            out.append(REDUCE)
            depth -= 1
    return out


@given(valid_transitions())
def test_any_valid_sequence_round_trips_through_its_parse(transitions):
    n = transitions.count(SHIFT)
    words = [f"w{i}" for i in range(n)]
    tokens, back = parse_to_transitions(transitions_to_parse(words, transitions))
    assert tokens == words and back == transitions


@given(valid_transitions())
def test_any_valid_parse_without_spaces_round_trips(transitions):
    words = [f"w{i}" for i in range(transitions.count(SHIFT))]
    tight = transitions_to_parse(words, transitions).replace("( ", "(").replace(" )", ")")
    assert parse_to_transitions(tight) == (words, transitions)
