import gzip
import json

import pytest
from nli_rows import P1, P2, row, write_jsonl

from spinn.data.snli import LABELS, read_nli
from spinn.errors import ParseError, SpinnError
from spinn.transitions import REDUCE, SHIFT

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
