"""Single-sentence classification data: SST trees and label<TAB>parse files, good and bad."""

import re
from pathlib import Path

import pytest
from tiny_runs import run_script

from spinn.data.classify import label_names, read_classify
from spinn.errors import SpinnError
from spinn.transitions import parse_to_transitions, transitions_to_parse

SST = [
    "(3 (2 It) (4 (2 's) (3 good)))",
    "(2 (2 Just) (2 fine))",
    "(0 (1 (2 A) (0 mess)) (2 .))",
    "(4 (2 (2 8 1\\/2) (2 -LRB-wow-RRB-)) (4 (3 \\*) (4 Great)))",
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def tree(ex) -> str:
    return transitions_to_parse(ex.premise, ex.premise_transitions)


def test_sst_roots_binary_and_fine(tmp_path):
    path = write(tmp_path / "train.txt", SST)
    binary = read_classify(path, fmt="sst", sst_labels="binary")
    assert [ex.label for ex in binary.examples] == [1, 0, 1] and binary.no_gold == 1  # "Just fine" is 2
    first = binary.examples[0]
    assert tree(first) == "( It ( 's good ) )" and first.hypothesis is None and first.pair_id == "train.txt:1"
    fine = read_classify(path, fmt="sst", sst_labels="fine")
    assert [ex.label for ex in fine.examples] == [3, 2, 0, 4] and fine.no_gold == 0
    # A leaf of several words becomes those words, right-branching; \/ and \* are unescaped; -LRB- kept.
    assert tree(fine.examples[3]) == "( ( ( 8 1/2 ) -LRB-wow-RRB- ) ( * Great ) )"
    assert label_names("sst", "binary") == ("negative", "positive") and len(label_names("sst", "fine")) == 5


def test_sst_phrases_are_every_node_once(tmp_path):
    path = write(tmp_path / "train.txt", SST[:3] + [SST[0]])
    fine = read_classify(path, fmt="sst", sst_labels="fine", phrases=True, lowercase=True)
    got = {(tree(ex), ex.label) for ex in fine.examples}
    assert len(got) == len(fine.examples)  # the repeated sentence adds nothing
    assert got == {
        ("it", 2), ("'s", 2), ("good", 3), ("( 's good )", 4), ("( it ( 's good ) )", 3),
        ("just", 2), ("fine", 2), ("( just fine )", 2),
        ("a", 2), ("mess", 0), ("( a mess )", 1), (".", 2), ("( ( a mess ) . )", 0),
    }  # fmt: skip
    binary = read_classify(path, fmt="sst", sst_labels="binary", phrases=True, lowercase=True)
    assert {(tree(ex), ex.label) for ex in binary.examples} == {
        ("good", 1), ("( 's good )", 1), ("( it ( 's good ) )", 1),
        ("mess", 0), ("( a mess )", 0), ("( ( a mess ) . )", 0),
    }  # fmt: skip


def test_real_sst_counts(data_dir):
    binary = read_classify(data_dir / "sst" / "dev.txt", fmt="sst", sst_labels="binary")
    assert (len(binary.examples), binary.no_gold) == (872, 229)  # the published binary dev size
    fine = read_classify(data_dir / "sst" / "train.txt", fmt="sst", sst_labels="fine")
    assert len(fine.examples) == 8544


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("(3 (2 It) (4 good)", "expected one complete tree"),
        (") (3 (2 It) (4 good))", "item 1: ')' closes no bracket"),
        ("(3 (2 It) (4 good)))", "item 12: text after the tree's closing bracket"),
        ("(7 (2 It) (4 good))", "expected a label 0-4 after '(', found '7'"),
        ("(3 (2 It) (4 good) (2 !))", "has 3 children, expected 2"),
        ("(3 (2 It) (4 good)) (2 x)", "text after the tree"),
        ("(3 It (4 good))", "both words and subtrees"),
        ("(3 (2 It) good)", "both words and subtrees"),
        ("It is good", "expected '(' to open a tree, found 'It'"),
    ],
)
def test_sst_reader_refuses_bad_trees_naming_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.txt", [SST[0], "", line])
    with pytest.raises(SpinnError, match=re.escape(message)) as err:
        read_classify(path, fmt="sst")
    assert str(err.value).startswith(f"{path}:3:")
    skipped = read_classify(path, fmt="sst", skip_invalid=True)
    assert (len(skipped.examples), skipped.invalid) == (1, 1)


def test_tsv_reads_listops_lines(tmp_path):
    path = write(tmp_path / "train.tsv", ["9\t( ( ( [MAX 2 ) 9 ) ] )", "", "1\t( ( [MIN 1 ) ] )"])
    data = read_classify(path, fmt="tsv", num_classes=10)
    assert [ex.label for ex in data.examples] == [9, 1]
    words, transitions = parse_to_transitions("( ( ( [MAX 2 ) 9 ) ] )")
    assert data.examples[0].premise == words and data.examples[0].premise_transitions == transitions
    assert data.examples[1].pair_id == "train.tsv:3"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("9 ( ( [MAX 2 ) ] )", "expected 'label<TAB>binary parse', found no tab"),
        ("12\t( ( [MAX 2 ) ] )", "label '12': expected a class id 0 to 9"),
        ("x\t( ( [MAX 2 ) ] )", "label 'x': expected a class id 0 to 9"),
        ("3\t( ( [MAX 2 ) ]", "unbalanced parse"),
        ("3\t( [MAX 2 ] )", "has 3 children, expected 2"),
    ],
)
def test_tsv_reader_refuses_bad_lines_naming_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.tsv", ["1\t( ( [MIN 1 ) ] )", line])
    with pytest.raises(SpinnError, match=re.escape(message)) as err:
        read_classify(path, fmt="tsv")
    assert str(err.value).startswith(f"{path}:2:")


def test_files_that_are_missing_empty_or_not_utf8(tmp_path):
    with pytest.raises(SpinnError, match="no such file"):
        read_classify(tmp_path / "none.tsv", fmt="tsv")
    with pytest.raises(SpinnError, match="empty file"):
        read_classify(write(tmp_path / "empty.tsv", ["", " "]), fmt="tsv")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(SST[0].encode() + b"\n(3 (2 caf\xe9) (2 x))\n")
    with pytest.raises(SpinnError, match=r"latin.txt:2: expected UTF-8 text, found byte 0xe9"):
        read_classify(latin, fmt="sst")


def test_length_policy(tmp_path):
    path = write(tmp_path / "a.tsv", ["9\t( ( ( [MAX 2 ) 9 ) ] )", "1\t( ( [MIN 1 ) ] )"])
    with pytest.raises(SpinnError, match=r"a.tsv:1: 4 words, more than max_length=3"):
        read_classify(path, fmt="tsv", max_length=3)
    skipped = read_classify(path, fmt="tsv", max_length=3, too_long="skip")
    assert [ex.label for ex in skipped.examples] == [1] and skipped.too_long == 1
    cut = read_classify(path, fmt="tsv", max_length=3, too_long="truncate")
    assert cut.examples[0].premise == ["[MAX", "2", "9"] and tree(cut.examples[0]) == "( ( [MAX 2 ) 9 )"
    assert len(read_classify(path, fmt="tsv", limit=1).examples) == 1
    trees = write(tmp_path / "t.txt", SST[:1])  # one tree of five phrases
    assert len(read_classify(trees, fmt="sst", sst_labels="fine", phrases=True, limit=3).examples) == 3


@pytest.mark.slow
def test_bad_training_file_stops_the_trainer_with_one_line_and_status_2(tmp_path):
    train = write(tmp_path / "train.tsv", ["1\t( ( [MIN 1 ) ] )", "11\t( ( [MIN 1 ) ] )"])
    cmd = ["scripts/train.py", "--config", "configs/listops_spinn_pi_nt.yaml"]
    cmd += ["--set", f"data.train={train}", "--set", f"data.dev={train}", "--set", "data.test=null"]
    cmd += ["--set", f"train.out_dir={tmp_path / 'run'}"]
    proc = run_script(*cmd)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {train}:2: label '11': expected a class id 0 to 9 (data.num_classes)"
    )
