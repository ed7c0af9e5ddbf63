import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nli_rows import LONG, P1, P2, row, write_jsonl

from spinn.data.snli import LABELS, read_nli, truncate_transitions
from spinn.errors import ParseError, SpinnError
from spinn.transitions import REDUCE, SHIFT, transitions_to_parse, validate_transitions

TSV_HEADER = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1\tsentence2\tpairID"


def test_jsonl_fields_become_an_example(tmp_path):
    data = read_nli(write_jsonl(tmp_path / "a.jsonl", [row("contradiction")]), progress=False)
    (ex,) = data.examples
    assert ex.pair_id == "p1" and ex.label == LABELS.index("contradiction") == 2
    assert ex.premise == ["A", "dog", "runs"]
    assert ex.premise_transitions == [SHIFT, SHIFT, REDUCE, SHIFT, REDUCE]
    assert ex.hypothesis == ["The", "dog", "moves"]
    assert ex.hypothesis_transitions == [SHIFT, SHIFT, SHIFT, REDUCE, REDUCE]
    assert ex.genre is None
    assert (data.no_gold, data.invalid) == (0, 0)


def test_no_gold_rows_are_skipped_and_counted(tmp_path):
    rows = [row(), row("-", pair_id="p2"), row("neutral", pair_id="p3")]
    data = read_nli(write_jsonl(tmp_path / "a.jsonl", rows), progress=False)
    assert [e.pair_id for e in data.examples] == ["p1", "p3"]
    assert data.no_gold == 1


def test_multinli_genre_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [row(genre="fiction"), ""])
    assert read_nli(path, progress=False).examples[0].genre == "fiction"


def test_missing_pair_id_falls_back_to_file_and_line(tmp_path):
    r = row()
    del r["pairID"]
    path = write_jsonl(tmp_path / "a.jsonl", [row(), r])
    assert read_nli(path, progress=False).examples[1].pair_id == "a.jsonl:2"


def test_lowercase_option(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row()])
    assert read_nli(path, lowercase=True, progress=False).examples[0].premise == ["a", "dog", "runs"]
    assert read_nli(path, progress=False).examples[0].premise[0] == "A"


def test_gzip_and_tsv_give_the_same_examples(tmp_path):
    rows = [row(), row("-", pair_id="p2"), row("neutral", pair_id="p3")]
    plain = read_nli(write_jsonl(tmp_path / "a.jsonl", rows), progress=False)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    gz = read_nli(tmp_path / "a.jsonl.gz", progress=False)
    lines = [TSV_HEADER] + [
        f"{r['gold_label']}\t{P1}\t{P2}\tA dog runs\tThe dog moves\t{r['pairID']}" for r in rows
    ]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    tsv = read_nli(tmp_path / "a.txt", progress=False)
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    tsv_gz = read_nli(tmp_path / "b.txt.gz", progress=False)
    for other in (gz, tsv, tsv_gz):
        assert other.examples == plain.examples
        assert other.no_gold == 1


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ({**row(), "gold_label": "maybe"}, "a.jsonl:2: field 'gold_label': unknown label 'maybe'"),
        (
            {k: v for k, v in row().items() if k != "sentence2_binary_parse"},
            "a.jsonl:2: field 'sentence2_binary_parse'",
        ),
        (
            {**row(), "sentence1_binary_parse": 7},
            "a.jsonl:2: field 'sentence1_binary_parse': expected a string, found 7",
        ),
        ('{"gold_label": "neutral", ', "a.jsonl:2: bad JSON"),
        ("[1, 2]", "a.jsonl:2: expected a JSON object, found list"),
        (
            {**row(), "sentence1_binary_parse": "( a b c )"},
            "a.jsonl:2: field 'sentence1_binary_parse': non-binary",
        ),
        (
            {**row(), "sentence2_binary_parse": "( a b"},
            "a.jsonl:2: field 'sentence2_binary_parse': unbalanced",
        ),
    ],
)
def test_bad_rows_raise_naming_file_line_and_field(tmp_path, line, fragment):
    path = write_jsonl(tmp_path / "a.jsonl", [row(), line])
    with pytest.raises(SpinnError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        read_nli(path, progress=False)


def test_invalid_parse_is_a_parse_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(s1="( a )")])
    with pytest.raises(ParseError):
        read_nli(path, progress=False)


def test_skip_invalid_counts_and_prints_first_reasons(tmp_path, capsys):
    rows = [row(), row("maybe"), "{bad", row(s1="( a b c )"), row("neutral", pair_id="ok")]
    rows += [row("x")] * 6
    data = read_nli(write_jsonl(tmp_path / "a.jsonl", rows), skip_invalid=True, progress=False)
    assert [e.pair_id for e in data.examples] == ["p1", "ok"]
    assert data.invalid == 9
    assert len(data.invalid_reasons) == 5 and "a.jsonl:2" in data.invalid_reasons[0]
    err = capsys.readouterr().err
    assert "skipped 9 invalid row(s)" in err and "a.jsonl:3: bad JSON" in err


def test_tsv_header_must_name_the_parse_columns(tmp_path):
    (tmp_path / "a.txt").write_text("gold_label\tsentence1\n")
    with pytest.raises(SpinnError, match="a.txt:1: header lacks column.*sentence1_binary_parse"):
        read_nli(tmp_path / "a.txt", progress=False)


def test_tsv_short_row_names_the_missing_field(tmp_path):
    (tmp_path / "a.txt").write_text(TSV_HEADER + f"\nneutral\t{P1}\n")
    with pytest.raises(SpinnError, match="a.txt:2: field 'sentence2_binary_parse'"):
        read_nli(tmp_path / "a.txt", progress=False)


def test_empty_tsv_and_unknown_or_missing_files(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(SpinnError, match="empty file"):
        read_nli(tmp_path / "e.txt", progress=False)
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(SpinnError, match="unknown format '.csv'"):
        read_nli(tmp_path / "a.csv", progress=False)
    with pytest.raises(SpinnError, match="no such file"):
        read_nli(tmp_path / "missing.jsonl", progress=False)


def test_progress_bar_counts_the_bytes(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [row()] * 3)
    assert len(read_nli(path, progress=True).examples) == 3
    size = path.stat().st_size
    assert f"{size}/{size}" in capsys.readouterr().err


def test_byte_range_reads_whole_lines_and_needs_plain_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(pair_id=f"p{i}") for i in range(4)])
    cut = len(path.read_bytes().splitlines(keepends=True)[0]) * 2
    part = read_nli(path, progress=False, byte_range=(cut, path.stat().st_size), first_line=3)
    assert [e.pair_id for e in part.examples] == ["p2", "p3"]
    (tmp_path / "a.txt").write_text(TSV_HEADER + "\n")
    with pytest.raises(SpinnError, match="byte_range needs an uncompressed .jsonl"):
        read_nli(tmp_path / "a.txt", progress=False, byte_range=(0, 1))


def test_limit_stops_reading_and_counts_only_the_rows_read(tmp_path):
    rows = [row(pair_id="a"), row(label="-"), row(pair_id="b"), row(label="-"), row(label="-"), row()]
    data = read_nli(write_jsonl(tmp_path / "d.jsonl", rows), progress=False, limit=2)
    assert [e.pair_id for e in data.examples] == ["a", "b"] and data.no_gold == 1
    with pytest.raises(SpinnError, match="limit must be >= 1"):
        read_nli(tmp_path / "d.jsonl", limit=0)


def test_an_error_while_reading_starts_on_a_line_of_its_own(tmp_path, capsys):
    rows = [row()] * 3 + ['{"bad json']
    with pytest.raises(SpinnError, match="d.jsonl:4: bad JSON") as err:
        read_nli(write_jsonl(tmp_path / "d.jsonl", rows), progress=True)
    assert capsys.readouterr().err.endswith("\n")  # the progress bar was closed before the error
    del err


P1_FULL = "(ROOT (S (NP (DT A) (NN dog)) (VP (VBZ runs))))"


def read(path, **kwargs):
    return read_nli(path, progress=False, **kwargs)


def test_full_parse_with_another_leaf_count_names_both_fields(tmp_path):
    ok = row(sentence1_parse=P1_FULL)
    short = row(sentence1_parse="(ROOT (S (NP (NN dog)) (VP (VBZ runs))))")
    path = write_jsonl(tmp_path / "a.jsonl", [ok, short])
    with pytest.raises(ParseError) as err:
        read(path)
    assert str(err.value) == (
        f"{path}:2: field 'sentence1_binary_parse': 3 words, but field 'sentence1_parse' of the same row "
        f"has 2 leaves; expected the same tokens in both parses"
    )
    assert len(read(path, skip_invalid=True).examples) == 1
    spaced = row(sentence1_parse=" (ROOT\t(S (NP (DT A)  (NN dog)) (VP (VBZ runs))))\n")
    assert len(read(write_jsonl(tmp_path / "b.jsonl", [spaced])).examples) == 1


def test_leaf_check_holds_on_every_real_snli_row_and_catches_a_damaged_one(data_dir, tmp_path):
    source = data_dir / "snli_1.0" / "snli_1.0_dev.jsonl"
    assert len(read(source).examples) == 9842  # raises if the check rejected any real row
    lines = source.read_bytes().splitlines(keepends=True)[:20]
    damaged = json.loads(lines[6])
    damaged["sentence2_parse"] = damaged["sentence2_parse"].replace("(DT A) ", "", 1)
    assert damaged["sentence2_parse"] != json.loads(lines[6])["sentence2_parse"]
    lines[6] = json.dumps(damaged).encode() + b"\n"
    (tmp_path / "dev.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(ParseError, match=r"dev.jsonl:7: field 'sentence2_binary_parse': \d+ words, but"):
        read(tmp_path / "dev.jsonl")


def test_a_utf8_byte_order_mark_is_accepted_in_both_formats(tmp_path):
    plain = read(write_jsonl(tmp_path / "a.jsonl", [row(), row(pair_id="p2")]))
    bom = read(
        write_jsonl(tmp_path / "b.jsonl", [b"\xef\xbb\xbf" + json.dumps(row()).encode(), row(pair_id="p2")])
    )
    assert bom.examples == plain.examples
    header = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tpairID"
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + f"{header}\nentailment\t{P1}\t{P2}\tp1\n".encode())
    assert read(tmp_path / "a.txt").examples == plain.examples[:1]


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_invalid_utf8_names_line_byte_and_offset(tmp_path, suffix):
    bad = json.dumps(row(s1="( caf\udce9 x )"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    if suffix == ".txt":
        lines = [b"gold_label\tsentence1_binary_parse\tsentence2_binary_parse", b"neutral\t( caf\xe9 x )\tb"]
    else:
        lines = [json.dumps(row()).encode(), bad]
    path = tmp_path / f"a{suffix}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SpinnError, match=rf"a{suffix}:2: expected UTF-8 text, found byte 0xe9 at byte \d+"):
        read(path)
    assert read(path, skip_invalid=True).invalid == 1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", b""),
        ("blank.jsonl", b"\n  \n"),
        ("h.txt", b"gold_label\tsentence1_binary_parse\tsentence2_binary_parse\n"),
    ],
)
def test_an_empty_file_is_an_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SpinnError, match=f"{name}: empty file, expected one sentence pair per line"):
        read(tmp_path / name)


def test_a_split_with_no_usable_rows_is_refused_where_a_split_is_needed(tmp_path):
    # Imported here: the training modules are not needed by the rest of this file.
    from spinn.config import DataConfig
    from spinn.evaluate import read_table

    path = write_jsonl(tmp_path / "a.jsonl", [row("-"), row("maybe"), b"{bad"])
    data = read(path, skip_invalid=True)
    assert (len(data.examples), data.no_gold, data.invalid) == (0, 1, 2)
    with pytest.raises(
        SpinnError, match="a.jsonl: no usable sentence pairs, expected at least one; found 1 row"
    ):
        read_table(path, DataConfig(skip_invalid=True, cache_dir=str(tmp_path / "c")), progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_truncated_or_corrupt_gz_names_the_file(tmp_path, damage):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"".join(json.dumps(row(pair_id=f"p{i}")).encode() + b"\n" for i in range(500)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not gzip data at all\n")
    with pytest.raises(SpinnError, match=r"a.jsonl.gz: cannot read past line \d+ .*is it truncated"):
        read(path)


def test_too_long_error_names_line_field_and_both_lengths(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(), row(s2=LONG, pair_id="p2")])
    with pytest.raises(SpinnError) as err:
        read(path, max_length=4)
    assert f"{path}:2: field 'sentence2_binary_parse': 6 words, more than max_length=4" in str(err.value)
    with pytest.raises(SpinnError, match="max_length must be >= 1"):
        read(path, max_length=0)
    with pytest.raises(SpinnError, match="too_long must be one of error, skip, truncate; found 'cut'"):
        read(path, max_length=4, too_long="cut")


def test_too_long_skip_counts_and_truncate_keeps_valid_trees(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [row(), row(s1=LONG, pair_id="p2"), row(s2=LONG, pair_id="p3")])
    skipped = read(path, max_length=4, too_long="skip")
    assert [e.pair_id for e in skipped.examples] == ["p1"] and skipped.too_long == 2
    assert "skipped 2 pair(s) with a sentence over 4 words" in capsys.readouterr().err
    cut = read(path, max_length=4, too_long="truncate")
    assert cut.too_long == 2 and cut.examples[0] == skipped.examples[0]
    assert cut.examples[1].premise == ["a", "b", "c", "d"]
    assert transitions_to_parse(cut.examples[1].premise, cut.examples[1].premise_transitions) == (
        "( ( a b ) ( c d ) )"
    )
    assert cut.examples[2].hypothesis == ["a", "b", "c", "d"] and cut.examples[2].premise == [
        "A",
        "dog",
        "runs",
    ]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_truncation_keeps_every_whole_constituent_and_builds_one_tree(data):
    n = data.draw(st.integers(1, 30))
    # A random valid sequence: SHIFT while words remain, REDUCE where the stack allows, chosen at random.
    seq, depth, shifts = [], 0, 0
    while shifts < n or depth > 1:
        can_shift, can_reduce = shifts < n, depth >= 2
        if can_shift and (not can_reduce or data.draw(st.booleans())):
            seq, depth, shifts = [*seq, SHIFT], depth + 1, shifts + 1
        else:
            seq, depth = [*seq, REDUCE], depth - 1
    k = data.draw(st.integers(1, 35))
    cut = truncate_transitions(seq, k)
    validate_transitions(cut, min(n, k))
    if k >= n:
        assert cut == seq
    else:
        # The prefix up to the (k+1)-th SHIFT survives intact; only REDUCEs are added after it.
        prefix = seq[: [i for i, t in enumerate(seq) if t == SHIFT][k]]
        assert cut[: len(prefix)] == prefix and set(cut[len(prefix) :]) <= {REDUCE}


def test_a_parse_whose_words_differ_from_its_sentence_is_refused_or_counted(tmp_path, capsys):
    rows = [
        {"gold_label": "neutral", "sentence1": "A dog (brown) runs.", "sentence2": 'It\'s "fast".'},
        {"gold_label": "neutral", "sentence1": "A cat sleeps.", "sentence2": "It's fast."},
    ]
    rows[0]["sentence1_binary_parse"] = "( ( A ( dog ( -LRB- ( brown -RRB- ) ) ) ) ( runs . ) )"
    rows[0]["sentence2_binary_parse"] = "( It ( 's ( `` ( fast ( '' . ) ) ) ) )"
    rows[1]["sentence1_binary_parse"] = "( ( A dog ) ( sleeps . ) )"  # a shifted row: another sentence
    rows[1]["sentence2_binary_parse"] = "( It ( 's ( fast . ) ) )"
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpinnError, match=f"{path}:2: field 'sentence1_binary_parse': its words differ from"):
        read_nli(path, progress=False)
    data = read_nli(path, progress=False, check_text=False, lowercase=True)
    assert len(data.examples) == 2 and data.text_differs == 1
    assert "kept 1 pair(s) whose parse words differ from their sentence text" in capsys.readouterr().err
    assert len(read_nli(path, progress=False, skip_invalid=True).examples) == 1
