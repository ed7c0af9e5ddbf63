import json
import subprocess
import sys

import pytest
from tiny_runs import ROOT, leftovers, user_error

from spinn.errors import ParseError, SpinnError
from spinn.predict import main as predict_main
from spinn.predict import read_pairs, read_sentence
from spinn.transitions import REDUCE, SHIFT


def test_a_binary_parse_is_read_as_given():
    s = read_sentence("( ( A dog ) runs )", lowercase=True, where="x")
    assert (s.tokens, s.source) == (["a", "dog", "runs"], "given")
    assert s.transitions == [SHIFT, SHIFT, REDUCE, SHIFT, REDUCE]


def test_raw_text_is_tokenised_into_a_balanced_tree():
    s = read_sentence("The dog (a puppy) isn't here.", lowercase=False, where="x")
    assert s.tokens == ["The", "dog", "-LRB-", "a", "puppy", "-RRB-", "is", "n't", "here", "."]
    assert s.source == "raw" and len(s.transitions) == 2 * len(s.tokens) - 1


@pytest.mark.parametrize(("text", "error"), [("   ", SpinnError), ("( ( A dog ) )", ParseError)])
def test_bad_sentences(text, error):
    with pytest.raises(error, match="pair 3: premise"):
        read_sentence(text, lowercase=False, where="pair 3: premise")


def test_read_pairs_from_jsonl_and_tsv(tmp_path):
    rows = [
        {"pairID": "p1", "sentence1": "A dog runs.", "sentence2": "An animal moves."},
        {
            "sentence1_binary_parse": "( A dog )",
            "sentence1": "A dog",
            "premise": "x",
            "hypothesis": "No dog.",
        },
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pairs = read_pairs(tmp_path / "p.jsonl")
    assert [(p.premise, p.hypothesis, p.pair_id) for p in pairs] == [
        ("A dog runs.", "An animal moves.", "p1"),
        ("( A dog )", "No dog.", None),
    ]
    (tmp_path / "p.tsv").write_text("sentence1\tsentence2\nA cat.\tA pet.\n", encoding="utf-8")
    assert [(p.premise, p.hypothesis) for p in read_pairs(tmp_path / "p.tsv")] == [("A cat.", "A pet.")]
    (tmp_path / "bad.jsonl").write_text('{"sentence1": "A cat."}\n', encoding="utf-8")
    with pytest.raises(
        SpinnError, match=r"bad.jsonl:1: expected a non-empty field among sentence2_binary_parse"
    ):
        read_pairs(tmp_path / "bad.jsonl")


def test_pair_files_are_read_like_the_training_data(tmp_path):
    # A byte-order mark is dropped, as `read_nli` drops it; a byte that is not UTF-8 names its line.
    (tmp_path / "bom.tsv").write_bytes("\ufeffsentence1\tsentence2\nA cat.\tA pet.\n".encode())
    assert [(p.premise, p.hypothesis) for p in read_pairs(tmp_path / "bom.tsv")] == [("A cat.", "A pet.")]
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"sentence1": "A dog.", "sentence2": "A pet."}\n{"sentence1": "Caf\xe9", "sentence2": "A pet."}\n'
    )
    with pytest.raises(SpinnError, match=r"latin1.jsonl:2: expected UTF-8 text, found byte 0xe9"):
        read_pairs(tmp_path / "latin1.jsonl")
    (tmp_path / "p.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(SpinnError, match=r"unknown format '.csv', expected .jsonl, .tsv or .txt"):
        read_pairs(tmp_path / "p.csv")


@pytest.mark.slow
def test_output_piped_into_head_stops_quietly(trained, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    line = json.dumps({"sentence1": "A man sleeps.", "sentence2": "A person rests."}) + "\n"
    pairs.write_text(line * 3000)  # ~400 KB of output: more than a pipe holds
    script = (
        f"{sys.executable} scripts/predict.py --checkpoint {trained / 'best.pt'} --input {pairs} | head -1"
    )
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout)["label"] in ("entailment", "neutral", "contradiction")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("premise", "expected"),
    [
        ("", "pair 1: premise: empty sentence"),
        ("   ", "pair 1: premise: empty sentence"),
        ("qwxz zzkq", "pair 1: premise: none of its 2 words is in the model's vocabulary"),
        ("( ( A dog ) runs ) )", "pair 1: premise: unbalanced parse"),
        ("( A dog runs )", "pair 1: premise: non-binary parse"),
    ],
)
def test_bad_prediction_input_names_the_pair_and_side(trained, capsys, premise, expected):
    argv = ["--checkpoint", str(trained), "--premise", premise, "--hypothesis", "A dog moves."]
    assert expected in user_error(predict_main, argv, capsys)


def test_bad_prediction_file_names_the_line(trained, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"sentence1": "A dog runs.", "sentence2": "A dog moves."}) + "\n{oops\n")
    argv = ["--checkpoint", str(trained), "--input", str(path)]
    assert f"{path}:2: bad JSON" in user_error(predict_main, argv, capsys)


def test_predict_output_is_untouched_when_a_pair_fails_halfway(trained, tmp_path, capsys):
    pairs, output = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    good = json.dumps({"sentence1": "A man sleeps.", "sentence2": "A person rests."}) + "\n"
    bad = json.dumps({"sentence1": "A man sleeps.", "sentence2": "qwxz zzkq"}) + "\n"
    pairs.write_text(good * 300 + bad)
    output.write_text("the old predictions\n")
    argv = ["--checkpoint", str(trained), "--input", str(pairs), "--output", str(output)]
    assert "pair 301: hypothesis: none of its 2 words" in user_error(predict_main, argv, capsys)
    assert output.read_text() == "the old predictions\n" and leftovers(tmp_path) == []
    assert predict_main(argv[:-4] + ["--input", str(tmp_path / "ok.jsonl"), "--output", str(output)]) == 2
    capsys.readouterr()
    (tmp_path / "ok.jsonl").write_text(good * 3)
    assert predict_main(argv[:-4] + ["--input", str(tmp_path / "ok.jsonl"), "--output", str(output)]) == 0
    assert len(output.read_text().splitlines()) == 3
