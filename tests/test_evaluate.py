import json
from pathlib import Path

import pytest
import torch
from tiny_runs import file_size_limit, sets, user_error

from spinn.config import Config, build_model
from spinn.data.batching import NLIDataset, collate_nli
from spinn.data.snli import NLIExample
from spinn.data.vocab import Vocab
from spinn.evaluate import EvalResult, Split, classification_report, evaluate, format_report, metrics
from spinn.evaluate import main as evaluate_main
from spinn.predict import main as predict_main
from spinn.train import main as train_main
from spinn.transitions import balanced


def test_classification_report_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    report = classification_report(labels, preds)
    assert report["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    ent, neu, con = (report["per_class"][k] for k in ("entailment", "neutral", "contradiction"))
    assert (ent["precision"], ent["recall"], ent["support"]) == (1.0, 2 / 3, 3)
    assert (neu["precision"], neu["recall"]) == (0.5, 0.5)
    assert con["precision"] == 0.5 and con["recall"] == 1.0
    assert con["f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def _examples(n: int) -> list[NLIExample]:
    words = "a man dog runs sits the park red".split()
    out = []
    for i in range(n):
        p = [words[(i + k) % len(words)] for k in range(1 + i % 5)]
        h = [words[(2 * i + k) % len(words)] for k in range(1 + i % 3)]
        out.append(NLIExample(f"id{i}", p, balanced(len(p)), h, balanced(len(h)), i % 3))
    return out


@pytest.mark.parametrize("variant", ["spinn_pi", "spinn"])
def test_evaluate_covers_the_whole_split_in_its_order(variant):
    """Accuracy and loss are over every pair (not the last batch), matching a pair-by-pair loop."""
    examples = _examples(23)
    vocab = Vocab.build([e.premise + e.hypothesis for e in examples])
    dataset = NLIDataset(examples, vocab)
    cfg = Config()
    cfg.model.variant, cfg.model.d_embed, cfg.model.d_hidden, cfg.model.d_tracker = variant, 8, 8, 4
    cfg.model.mlp_dim, cfg.model.freeze_embeddings = 8, False
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab))
    result = evaluate(model, dataset, batch_size=5, device=torch.device("cpu"), progress=False)
    assert result.pair_ids == [e.pair_id for e in examples]
    one_by_one, agreeing = [], 0
    with torch.no_grad():
        for i in range(len(dataset)):
            out = model(collate_nli([dataset[i]]))
            one_by_one.append(out.logits.softmax(dim=1)[0])
            if variant == "spinn":  # its own parse against the given one, step by step
                for side, ex in (
                    (out.premise, examples[i].premise_transitions),
                    (out.hypothesis, examples[i].hypothesis_transitions),
                ):
                    predicted = side.predicted_transitions[0].tolist()  # PAD past the side's steps
                    agreeing += sum(int(a == b) for a, b in zip(predicted, ex, strict=False))
    probs = torch.stack(one_by_one)
    torch.testing.assert_close(result.probs, probs, atol=1e-5, rtol=1e-4)
    assert result.labels.tolist() == [e.label for e in examples]
    assert result.accuracy == pytest.approx((probs.argmax(1) == result.labels).float().mean().item())
    nll = -probs[torch.arange(len(probs)), result.labels].log().mean().item()
    assert result.loss == pytest.approx(nll, rel=1e-4)
    if variant == "spinn":
        assert result.parse_total == 2 * sum(len(e.premise) + len(e.hypothesis) for e in examples) - 2 * 23
        assert result.parse_correct == agreeing and 0 < agreeing < result.parse_total
    else:
        assert result.parse_accuracy is None


def test_eval_result_accuracy():
    result = EvalResult(
        torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]), torch.tensor([0, 2]), ["a", "b"], 0.3
    )
    assert result.predictions.tolist() == [0, 1] and result.accuracy == 0.5


def test_accuracy_by_genre_counts_each_pair_once(tmp_path):
    """MultiNLI rows carry a genre: the report gives each genre's accuracy, and a row without one
    counts as "none"."""
    result = EvalResult(
        probs=torch.eye(3)[[0, 1, 2, 0, 0, 1]],  # predicted 0 1 2 0 0 1
        labels=torch.tensor([0, 1, 1, 0, 2, 1]),
        pair_ids=[str(i) for i in range(6)],
        loss=0.0,
    )
    split = Split(
        dataset=None, path=tmp_path, no_gold=0, invalid=0, genres=["fic", "gov", "fic", None, "gov", "fic"]
    )
    m = metrics(result, split)
    assert m["per_genre"] == {
        "fic": {"accuracy": 2 / 3, "pairs": 3},
        "gov": {"accuracy": 0.5, "pairs": 2},
        "none": {"accuracy": 1.0, "pairs": 1},
    }
    assert "accuracy by genre: fic 0.6667 (3), gov 0.5000 (2), none 1.0000 (1)" in format_report(m)
    assert metrics(result, Split(None, tmp_path, 0, 0))["per_genre"] is None


def test_evaluate_reads_a_full_spinn_both_ways_into_separate_files(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert (
        train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=1", "model.variant=spinn")])
        == 0
    )
    probabilities = {}
    for how in ("given", "predicted"):
        argv = ["--checkpoint", str(run / "best.pt"), "--transitions", how, "--no-progress"]
        assert evaluate_main(argv) == 0
        m = json.loads((run / f"predictions_dev_{how}.metrics.json").read_text())
        assert m["transitions"] == how and 0 <= m["parse_accuracy"] <= 1
        rows = [json.loads(line) for line in (run / f"predictions_dev_{how}.jsonl").read_text().splitlines()]
        assert len(rows) == m["pairs"]
        probabilities[how] = [r["probabilities"] for r in rows]
    # The two readings build different trees: the barely trained parser does not reproduce SNLI's.
    assert probabilities["given"] != probabilities["predicted"]


def test_an_unknown_device_is_a_user_error(trained, capsys):
    for main, extra in ((evaluate_main, []), (predict_main, ["--premise", "a", "--hypothesis", "b"])):
        argv = ["--checkpoint", str(trained / "best.pt"), "--device", "gpu0", *extra]
        assert (
            user_error(main, argv, capsys) == "error: device 'gpu0': expected auto, cpu, cuda, cuda:N or mps"
        )


def test_evaluate_scores_the_runs_splits_as_it_did_and_any_other_file_whole(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=1", "data.limit=10")]) == 0
    dev = (
        next(a.split("=", 1)[1] for a in tiny_data if a.startswith("data.data_dir=")) + "/snli_1.0_dev.jsonl"
    )
    pairs = {}
    for which in (["--split", "dev"], ["--data", dev]):
        out = tmp_path / f"{which[0][2:]}.jsonl"
        argv = ["--checkpoint", str(run / "best.pt"), *which, "--output", str(out), "--no-progress"]
        assert evaluate_main(argv) == 0
        pairs[which[0]] = json.loads(out.with_suffix(".metrics.json").read_text())["pairs"]
    assert pairs == {"--split": 10, "--data": 24}


def test_evaluate_elsewhere_says_the_data_dir_is_relative(tiny_data, tmp_path, monkeypatch, capsys):
    """A run trained with a relative data.data_dir, evaluated from another folder."""
    root = Path(next(a.split("=", 1)[1] for a in tiny_data if a.startswith("data.data_dir=")))
    run = tmp_path / "run"
    monkeypatch.chdir(root.parent)
    overrides = sets(f"train.out_dir={run}", "train.max_steps=1", f"data.data_dir={root.name}")
    assert train_main([*tiny_data, *overrides]) == 0
    monkeypatch.chdir(tmp_path)
    assert user_error(evaluate_main, ["--checkpoint", str(run), "--no-progress"], capsys) == (
        f"error: {root.name}/snli_1.0_dev.jsonl: no such file; the run's config has data.data_dir "
        f"'{root.name}', "
        f"which is read relative to the current folder ({tmp_path}): run from the folder it trained in, "
        "or pass --data-dir DIR"
    )
    assert evaluate_main(["--checkpoint", str(run), "--data-dir", str(root), "--no-progress"]) == 0


def test_evaluate_writes_its_outputs_whole(trained, tmp_path, capsys):
    output = tmp_path / "out" / "predictions.jsonl"
    argv = ["--checkpoint", str(trained), "--no-progress", "--output", str(output)]
    with file_size_limit(200):
        assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {output}: cannot write the predictions (File too large)"), err
    assert not output.parent.exists()  # nor the folder made for it
    assert evaluate_main(argv) == 0
    assert json.loads(output.with_suffix(".metrics.json").read_text())["pairs"] == 24
