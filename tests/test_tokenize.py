import json

import pytest

from spinn.tokenize import tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man, smiling.", ["A", "man", ",", "smiling", "."]),
        ("The dog (a puppy) sleeps", ["The", "dog", "-LRB-", "a", "puppy", "-RRB-", "sleeps"]),
        ("[x] {y}", ["-LSB-", "x", "-RSB-", "-LCB-", "y", "-RCB-"]),
        ("He isn't here", ["He", "is", "n't", "here"]),
        ("Can't, won't, cannot", ["Ca", "n't", ",", "wo", "n't", ",", "can", "not"]),
        (
            "The man's hat; they're I'm we've",
            ["The", "man", "'s", "hat", ";", "they", "'re", "I", "'m", "we", "'ve"],
        ),
        ('She said "hello" loudly', ["She", "said", "``", "hello", "''", "loudly"]),
        ("a red t-shirt on a merry-go-round", ["a", "red", "t-shirt", "on", "a", "merry-go-round"]),
        ("1,000 people, 3.5 km, ages 2-3", ["1,000", "people", ",", "3.5", "km", ",", "ages", "2-3"]),
        ("Dr. Smith in the U.S. ...", ["Dr.", "Smith", "in", "the", "U.S.", "..."]),
        ("$5 or 5%!", ["$", "5", "or", "5", "%", "!"]),
        ("he/she waits", ["he/she", "waits"]),
        ("  ", []),
    ],
)
def test_ptb_conventions(text, tokens):
    assert tokenize(text) == tokens


def test_matches_snli_dev_tokens(data_dir):
    """The raw `sentence1`/`sentence2` text tokenises to the words of the binary parse."""
    total = same = 0
    with open(data_dir / "snli_1.0" / "snli_1.0_dev.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for raw, parse in (
                ("sentence1", "sentence1_binary_parse"),
                ("sentence2", "sentence2_binary_parse"),
            ):
                words = [t for t in row[parse].split() if t not in ("(", ")")]
                total += 1
                same += tokenize(row[raw]) == words
    assert same / total >= 0.999, f"{same}/{total} sentences tokenised as in the parse"
