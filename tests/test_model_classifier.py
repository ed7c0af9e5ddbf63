"""The NLI classifier: it learns, every parameter trains, checkpoints round-trip, padding is harmless."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_classifier

from spinn import pad_sentences
from spinn.data.batching import NLIBatch, pair_sentences
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.model import VARIANTS, NLIClassifier, build_schedule
from spinn.model.classifier import Dropout
from spinn.transitions import parse_to_transitions

LABELS = ("entailment", "neutral", "contradiction")


def read_pairs(path: Path, n: int) -> list[tuple[list[str], list[int], list[str], list[int], int]]:
    pairs = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row["gold_label"] not in LABELS:
                continue
            p, pt = parse_to_transitions(row["sentence1_binary_parse"])
            h, ht = parse_to_transitions(row["sentence2_binary_parse"])
            pairs.append((p, pt, h, ht, LABELS.index(row["gold_label"])))
            if len(pairs) == n:
                return pairs
    return pairs


def make_batch(pairs, vocab: Vocab) -> NLIBatch:
    return NLIBatch(
        premise=pad_sentences([vocab.encode(p[0]) for p in pairs], [p[1] for p in pairs]),
        hypothesis=pad_sentences([vocab.encode(p[2]) for p in pairs], [p[3] for p in pairs]),
        labels=torch.tensor([p[4] for p in pairs]),
        pair_ids=[str(i) for i in range(len(pairs))],
    )


@pytest.fixture(scope="module")
def snli_pairs(data_dir):
    pairs = read_pairs(data_dir / "snli_1.0" / "snli_1.0_train_0.01.jsonl", 64)
    vocab = Vocab.build([p[0] for p in pairs] + [p[2] for p in pairs])
    return pairs, vocab


def test_tiny_model_overfits_64_real_pairs(snli_pairs):
    pairs, vocab = snli_pairs
    batch = make_batch(pairs, vocab)
    model = tiny_classifier(
        len(vocab), "spinn_pi", d_embed=32, d_hidden=32, dropout=0.0, freeze_embeddings=False
    )
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(200):
        model.train()
        out = model(batch)
        loss = model.loss(out, batch.labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(batch).logits.argmax(1) == batch.labels).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"training accuracy {accuracy:.3f} after {step + 1} steps"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_gradient(snli_pairs, variant):
    pairs, vocab = snli_pairs
    batch = make_batch(pairs[:8], vocab)
    model = tiny_classifier(len(vocab), variant, freeze_embeddings=False).train()
    out = model(batch)
    assert (out.transition_loss is None) == (variant != "spinn")
    model.loss(out, batch.labels).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_embeddings_stay_fixed(snli_pairs):
    pairs, vocab = snli_pairs
    glove = torch.randn(len(vocab), 16)
    model = tiny_classifier(len(vocab), "spinn_pi", embeddings=glove)
    model.loss(model(make_batch(pairs[:4], vocab)), torch.tensor([0, 1, 2, 0])).backward()
    assert model.embed.weight.grad is None
    assert torch.equal(model.embed.weight, glove)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip(snli_pairs, variant):
    pairs, vocab = snli_pairs
    batch = make_batch(pairs[:8], vocab)
    model = tiny_classifier(len(vocab), variant)
    model.train()
    model(batch)  # moves the batch-norm running statistics away from their initial values
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    loaded = NLIClassifier(len(vocab), d_embed=16, d_hidden=16, d_tracker=8, variant=variant, mlp_dim=32)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_a_pair(snli_pairs, variant):
    pairs, vocab = snli_pairs
    # Pair 0 alone, then among longer and shorter pairs (premises and hypotheses padded differently).
    chosen = sorted(pairs[:12], key=lambda p: len(p[0]) + len(p[2]))
    model = tiny_classifier(len(vocab), variant).eval()
    with torch.no_grad():
        together = model(make_batch(chosen, vocab)).logits
        for i in (0, 5, 11):
            alone = model(make_batch(chosen[i : i + 1], vocab)).logits
            torch.testing.assert_close(alone[0], together[i], atol=1e-6, rtol=0)


def test_a_schedule_of_another_batch_is_reported(snli_pairs):
    pairs, vocab = snli_pairs
    model = tiny_classifier(len(vocab), "spinn_pi")
    other = make_batch(pairs[:3], vocab)
    other.schedule = build_schedule(pair_sentences(other).transitions, pair_sentences(other).lengths)
    with pytest.raises(SpinnError, match="the schedule is for 6 sentences of"):
        model(make_batch(pairs[:5], vocab), schedule=other.schedule)


def test_bad_arguments_are_reported():
    with pytest.raises(SpinnError, match="variant 'spin' is unknown"):
        NLIClassifier(10, variant="spin")
    with pytest.raises(SpinnError, match=r"expected \(10, 300\)"):
        NLIClassifier(10, embeddings=torch.zeros(10, 50))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(p):
    x = torch.rand(200, 500, dtype=torch.float32) + 0.5  # no zeros of its own
    x.requires_grad_()
    drop = Dropout(p)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.005  # 100k draws: 5 standard deviations
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the mask follows torch's seed
    assert torch.equal(drop.eval()(x), x)


def test_dropout_at_the_edges_and_elsewhere_is_torchs():
    x = torch.randn(50, 40)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))  # no 1 / (1 - p) = inf
    assert torch.equal(Dropout(0.0)(x), x)
    half = x.double()
    torch.manual_seed(1)
    expected = torch.nn.functional.dropout(half, 0.3, training=True)
    torch.manual_seed(1)
    assert torch.equal(Dropout(0.3)(half), expected)
