"""The sequential baselines (CBOW, LSTM) and the trivial-tree ablation."""

import json

import pytest
import torch
from tiny_runs import ROOT, sets

from spinn.config import ConfigError, build_model, load_config
from spinn.data import listops
from spinn.data.batching import NLIItem, collate_nli, pad_sentences
from spinn.data.cache import NLITable, with_trivial_trees
from spinn.data.snli import NLIExample
from spinn.errors import SpinnError
from spinn.model.baselines import CBOW, LSTMEncoder, padded_words
from spinn.model.classifier import NLIClassifier
from spinn.predict import main as predict_main
from spinn.train import main as train_main
from spinn.transitions import balanced, left_branching, right_branching

LENGTHS = [3, 1, 5, 2]


def words_and_lengths(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    sentences = [torch.randn(n, d, generator=g) for n in LENGTHS]
    return sentences, torch.cat(sentences), torch.tensor(LENGTHS)


def test_padded_words_from_packed_rows():
    sentences, packed, lengths = words_and_lengths()
    padded = padded_words(packed, lengths)
    assert padded.shape == (4, 5, 4)
    for b, s in enumerate(sentences):
        assert torch.equal(padded[b, : len(s)], s) and not padded[b, len(s) :].any()
    assert torch.equal(padded_words(padded, lengths), padded)
    with pytest.raises(SpinnError, match="10 packed word vectors for 11 words"):
        padded_words(packed[:10], lengths)


@pytest.mark.parametrize(
    ("how", "reference"),
    [("sum", lambda s: s.sum(0)), ("mean", lambda s: s.mean(0)), ("max", lambda s: s.max(0).values)],
)
def test_cbow_pools_each_sentence_alone(how, reference):
    sentences, packed, lengths = words_and_lengths()
    h = CBOW(4, how)(packed, None, lengths).h
    torch.testing.assert_close(h, torch.stack([reference(s) for s in sentences]))


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_gives_each_sentence_what_it_gives_alone(pooling, bidirectional):
    torch.manual_seed(0)
    encoder = LSTMEncoder(4, 6, bidirectional=bidirectional, pooling=pooling)
    sentences, packed, lengths = words_and_lengths()
    together = encoder(packed, None, lengths).h
    assert together.shape == (4, 12 if bidirectional else 6)
    alone = torch.cat([encoder(s, None, torch.tensor([len(s)])).h for s in sentences])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    if pooling == "last" and not bidirectional:  # the last state is the last output of a plain LSTM
        outputs, _ = encoder.lstm(sentences[2][None])
        torch.testing.assert_close(together[2], outputs[0, -1])


@pytest.mark.parametrize(("encoder", "pooling"), [("cbow", "sum"), ("lstm", "last"), ("lstm", "max")])
def test_baseline_classifiers_train_every_parameter(encoder, pooling):
    torch.manual_seed(0)
    model = NLIClassifier(
        20, d_embed=8, d_hidden=6, variant="spinn_pi_nt", freeze_embeddings=False, batch_norm=False,
        encoder=encoder, pooling=pooling, bidirectional=True,
    )  # fmt: skip
    items = [
        NLIItem([2, 3, 4], [0, 0, 1, 0, 1], [5, 6], [0, 0, 1], 0, "a"),
        NLIItem([7], [0], [8, 9, 10, 11], balanced(4), 2, "b"),
    ]
    batch = collate_nli(items)
    out = model(batch)
    model.loss(out, batch.labels).backward()
    assert out.logits.shape == (2, 3) and out.transition_loss is None
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_baseline_settings_are_checked():
    with pytest.raises(
        ConfigError, match="model.pooling: encoder 'cbow' pools by sum, mean, max; found 'last'"
    ):
        load_config(None, ["model.encoder=cbow", "model.pooling=last"])
    with pytest.raises(ConfigError, match="model.variant: 'spinn' predicts transitions"):
        load_config(None, ["model.encoder=lstm", "model.variant=spinn"])
    with pytest.raises(SpinnError, match="encoder 'gru' is unknown"):
        NLIClassifier(10, encoder="gru")
    cfg = load_config(None, ["model.encoder=lstm", "model.bidirectional=true", "model.d_hidden=7"])
    assert build_model(cfg, 10).mlp[1].in_features == 4 * 14


def test_trivial_trees_replace_every_parse():
    examples = [
        NLIExample("a", ["w"] * 3, [0, 0, 0, 1, 1], ["w"] * 4, [0, 0, 1, 0, 0, 1, 1], 0),
        NLIExample("b", ["w"] * 5, [0, 0, 1, 0, 1, 0, 1, 0, 1], ["w"], [0], 1),
    ]
    table = NLITable.from_examples(examples)
    assert with_trivial_trees(table, "given") is table
    for name, make in (("left", left_branching), ("right", right_branching), ("balanced", balanced)):
        trivial = with_trivial_trees(table, name)
        for side, lengths in (("premise", [3, 5]), ("hypothesis", [4, 1])):
            expected = [int(t) for n in lengths for t in make(n)]
            assert getattr(trivial, f"{side}_transitions").tolist() == expected
        assert trivial.premise_ids is table.premise_ids
    with pytest.raises(SpinnError, match="trees 'diagonal'"):
        with_trivial_trees(table, "diagonal")
    assert pad_sentences([[1, 2, 3]], [balanced(3)]).transitions.shape == (1, 5)


def test_training_on_balanced_trees_reads_and_predicts_balanced_trees(tmp_path, capsys):
    data = tmp_path / "data"
    listops.write_splits(data / "listops", seed=2, sizes={"train": 48, "dev": 20}, max_length=20)
    run = tmp_path / "run"
    overrides = ["model.d_embed=8", "model.d_hidden=8", "model.mlp_dim=8", "train.batch_size=16"]
    overrides += [
        f"data.data_dir={data}",
        "data.test=null",
        "data.transitions=balanced",
        f"train.out_dir={run}",
    ]
    overrides += [
        "train.max_steps=2",
        "train.eval_every=2",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    argv = ["--config", str(ROOT / "configs/listops_spinn_pi_nt.yaml")]
    assert train_main(argv + sets(*overrides)) == 0
    assert json.loads((run / "summary.json").read_text())["dev"]["pairs"] == 20
    capsys.readouterr()
    assert predict_main(["--checkpoint", str(run), "--sentence", "( ( ( [MAX 2 ) 9 ) ] )"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (
        record["sentence_tree"] == "( ( [MAX 2 ) ( 9 ] ) )" and record["sentence_tree_source"] == "balanced"
    )
