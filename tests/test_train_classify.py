"""Single-sentence classification through the trainer, evaluation and prediction."""

import json

import pytest
import torch
from tiny_runs import ROOT, sets, tiny_model, user_error

from spinn.config import ConfigError, build_model, load_config
from spinn.data import listops
from spinn.data.batching import NLIDataset, collate_nli
from spinn.data.cache import NLITable
from spinn.data.classify import read_classify
from spinn.data.vocab import Vocab
from spinn.evaluate import main as evaluate_main
from spinn.predict import main as predict_main
from spinn.train import main as train_main

TINY = tiny_model(16, "model.d_embed=16", "model.d_tracker=null")  # the ListOps config has no Tracker


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("listops")
    listops.write_splits(out, seed=1, sizes={"train": 64, "dev": 40, "test": 30}, max_length=30)
    return out


def test_listops_trains_evaluates_and_predicts(listops_dir, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [*TINY, f"data.data_dir={listops_dir}", "data.train=train.tsv", "data.dev=dev.tsv"]
    overrides += ["data.test=test.tsv", f"train.out_dir={run}", "train.max_steps=4", "train.eval_every=2"]
    assert train_main(["--config", str(ROOT / "configs/listops_spinn_pi_nt.yaml"), *sets(*overrides)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dev"]["pairs"] == 40 and summary["test"]["pairs"] == 30
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["config"]["task"] == "classify" and ckpt["model"]["mlp.4.weight"].shape == (10, 16)

    assert evaluate_main(["--checkpoint", str(run), "--split", "test", "--no-progress"]) == 0
    metrics = json.loads((run / "predictions_test.metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert list(metrics["per_class"]) == [str(i) for i in range(10)]
    assert len(metrics["confusion"]) == 10 and sum(map(sum, metrics["confusion"])) == 30
    rows = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text().splitlines()]
    gold = [int(line.split("\t")[0]) for line in (listops_dir / "test.tsv").read_text().splitlines()]
    assert sorted(int(r["gold_label"]) for r in rows) == sorted(gold)
    assert "30 sentences" in capsys.readouterr().out

    assert predict_main(["--checkpoint", str(run), "--sentence", "( ( ( [MAX 2 ) 9 ) ] )"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["sentence_tree"] == "( ( ( [MAX 2 ) 9 ) ] )" and record["sentence_tree_source"] == "given"
    assert set(record["probabilities"]) == {str(i) for i in range(10)}
    argv = ["--checkpoint", str(run), "--premise", "a", "--hypothesis", "b"]
    assert "classifies single sentences: give --sentence" in user_error(predict_main, argv, capsys)


def test_single_sentences_batch_as_they_run_alone(listops_dir):
    """Batching never changes a result: each sentence of a padded batch scores as it does alone."""
    data = read_classify(listops_dir / "dev.tsv", fmt="tsv")
    table = NLITable.from_examples(data.examples[:12])
    vocab = Vocab.from_counts(table.counts())
    dataset = NLIDataset(table, vocab)
    assert not dataset.pairs and dataset[0].hypothesis is None
    cfg = load_config(ROOT / "configs/listops_spinn_pi_nt.yaml", TINY)
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab)).eval()
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_nli(items, schedule=True)
    assert batch.hypothesis is None and batch.premise.tokens.shape[0] == 12
    together = model(batch).logits
    alone = torch.cat([model(collate_nli([it])).logits for it in items])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        ValueError, match="takes batches of single sentences, found a batch of sentence pairs"
    ):
        model(collate_nli([it._replace(hypothesis=it.premise, hypothesis_transitions=it.premise_transitions)
                           for it in items]))  # fmt: skip


def test_task_is_a_top_level_key():
    cfg = load_config(ROOT / "configs/small.yaml", ["task=classify", "data.format=tsv"])
    assert cfg.task == "classify"
    with pytest.raises(ConfigError, match="'task' is a key, not a section"):
        load_config(None, ["task.name=classify"])
    with pytest.raises(ConfigError, match="key 'task': expected one of nli, classify"):
        load_config(None, ["task=sst"])
    with pytest.raises(ConfigError, match="data.phrases: applies to data.format sst"):
        load_config(None, ["task=classify", "data.format=tsv", "data.phrases=true"])
    with pytest.raises(ConfigError, match="data.num_classes: expected at least 2"):
        load_config(None, ["data.num_classes=1"])
