"""Loading a trained classifier from Python (`spinn.load`) and labelling raw sentence pairs with it."""

import json
import math
import re
from pathlib import Path

import pytest
from nli_rows import first_rows
from tiny_runs import ROOT, run_script, sets, tiny_model

import spinn
from spinn.evaluate import main as evaluate_main
from spinn.tokenize import tokenize
from spinn.train import main as train_main

PAIRS = [
    ("A man is sleeping on a couch.", "A person rests."),
    ("Two dogs run through the snow.", "The animals are asleep."),
    ("A woman plays the guitar.", "( ( A woman ) ( makes music ) )"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A full SPINN (it predicts its own parses) trained for 2 steps on the first rows of the sample."""
    folder = tmp_path_factory.mktemp("load")
    overrides = [
        *first_rows(folder, train=64, dev=32),
        *tiny_model(16, "model.variant=spinn", f"train.out_dir={folder / 'run'}"),
    ]
    argv = ["--config", str(ROOT / "configs" / "small.yaml"), *sets(*overrides)]
    assert train_main([*argv, "--max-steps", "2"]) == 0
    return folder / "run"


def test_a_run_folder_and_its_best_checkpoint_load_the_same_classifier(run):
    clf = spinn.load(run, device="cpu")
    assert isinstance(clf, spinn.Predictor) and clf.path == run / "best.pt" and clf.step == 2
    assert clf.config.model.variant == "spinn" and "dog" in clf.vocab and not clf.model.training
    predictions = clf.predict(PAIRS)
    again = spinn.load(run / "best.pt", device="cpu").predict(PAIRS)
    assert [p.probabilities for p in again] == [p.probabilities for p in predictions]
    for p, (premise, hypothesis) in zip(predictions, PAIRS, strict=True):
        assert list(p.probabilities) == list(spinn.LABELS)
        assert math.isclose(sum(p.probabilities.values()), 1.0, rel_tol=1e-5)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        assert (p.premise, p.hypothesis) == (premise, hypothesis)
        # The full SPINN parses each sentence itself: a binary tree over its (lower-cased) words.
        assert p.premise_tree_source == p.hypothesis_tree_source == "predicted"
        words, transitions = spinn.parse_to_transitions(p.premise_tree)
        assert words == [w.lower() for w in tokenize(premise)] and len(transitions) == 2 * len(words) - 1


@pytest.mark.slow
def test_python_predictions_are_what_the_predict_command_writes(run, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for a, b in PAIRS))
    proc = run_script("scripts/predict.py", "--checkpoint", str(run), "--input", str(pairs))
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line) for line in proc.stdout.splitlines()]
    assert written == [p.to_record() for p in spinn.load(run, device="cpu").predict(PAIRS)]


def test_binary_parses_get_the_probabilities_evaluate_gives_the_same_pairs(run, tmp_path):
    """The dev rows through evaluate (read from the file, batched by length) and through predict
    (their parse text, in another batch): the same classifier, the same figures."""
    out = tmp_path / "dev.jsonl"
    assert evaluate_main(["--checkpoint", str(run), "--no-progress", "--output", str(out)]) == 0
    scored = {r["pairID"]: r for r in map(json.loads, out.read_text().splitlines())}
    dev = Path(spinn.load(run).config.data.path("snli_1.0_dev.jsonl"))
    rows = [r for r in map(json.loads, dev.read_text().splitlines()) if r["gold_label"] != "-"]
    pairs = [(r["sentence1_binary_parse"], r["sentence2_binary_parse"]) for r in rows]
    predictions = spinn.load(run, device="cpu").predict(pairs, batch_size=5)
    for row, p in zip(rows, predictions, strict=True):
        expected = scored[row["pairID"]]
        assert p.label == expected["predicted_label"]
        assert p.probabilities == pytest.approx(expected["probabilities"], abs=2e-6)


def test_given_transitions_read_raw_text_as_balanced_trees_with_a_warning(run):
    clf = spinn.load(run, device="cpu", transitions="given")
    with pytest.warns(UserWarning, match="1 raw-text sentence"):
        (p,) = clf.predict([("( ( A dog ) runs )", "An animal moves.")])
    assert (p.premise_tree_source, p.hypothesis_tree_source) == ("given", "balanced")
    assert p.premise_tree == "( ( a dog ) runs )"


@pytest.mark.parametrize("name", ["missing", "missing/best.pt", "empty_folder"])
def test_a_bad_path_is_a_spinn_error_naming_it(tmp_path, name):
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(spinn.SpinnError, match=re.escape(str(tmp_path / name)) + ".*no such checkpoint file"):
        spinn.load(tmp_path / name)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (
            [("A dog runs.",)],
            "pair 1: expected a (premise, hypothesis) pair of strings, found ('A dog runs.',)",
        ),
        ([PAIRS[0], ("A dog runs.", " ")], "pair 2: hypothesis: empty sentence"),
        (["A dog runs."], "pair 1: expected a (premise, hypothesis) pair of strings, found 'A dog runs.'"),
    ],
)
def test_bad_pairs_are_spinn_errors_naming_the_pair(run, pairs, expected):
    with pytest.raises(spinn.SpinnError) as err:
        spinn.load(run, device="cpu").predict(pairs)
    assert str(err.value).startswith(expected)


def test_an_unknown_transitions_setting_is_refused(run):
    with pytest.raises(spinn.SpinnError, match="transitions: expected one of predicted, given, found 'own'"):
        spinn.load(run, transitions="own")


def test_the_readme_loading_example_runs(run, tmp_path, monkeypatch):
    """The README's example as written, from a folder whose runs/small is the tiny run."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Loading a trained classifier\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "small").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["p"].label in spinn.LABELS and scope["clf"].path == Path("runs/small/best.pt")
