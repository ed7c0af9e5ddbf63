"""Compositions and leaf encoders: each option against the reference, in float64, on every variant."""

from __future__ import annotations

import pytest
import torch
from test_model_reference import assert_same, float64_batch, run
from test_model_spinn import VARIANTS, random_batch

from spinn.config import build_model, load_config
from spinn.errors import SpinnError
from spinn.model import COMPOSITIONS, LEAVES, SPINN

TRACKERS = {"spinn_pi_nt": (None, False), "spinn_pi": (6, False), "spinn": (6, True)}


def make(variant: str, composition: str = "treelstm", leaf: str = "projection") -> SPINN:
    torch.manual_seed(0)
    d_tracker, predict = TRACKERS[variant]
    return SPINN(7, 6, d_tracker, predict, composition=composition, leaf=leaf).double()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("leaf", [name for name in LEAVES if name != "projection"])  # that one: everywhere
def test_every_leaf_encoder_runs_on_the_engine_as_the_reference_does(variant, leaf):
    model = make(variant, leaf=leaf)
    words, transitions, lengths = float64_batch([5, 1, 80, 14], seed=3)
    fast, fast_path = run(model, words, transitions, lengths, engine=True)
    spec, spec_path = run(model, words, transitions, lengths, engine=False)
    assert (fast_path, spec_path) == ("engine", "reference")
    assert_same(fast, spec, atol=1e-10)


def sentence_by_sentence(model: SPINN, words, transitions, lengths):
    """What `run` returns from each sentence encoded alone: the vectors stacked, each sentence's scores
    over its own steps, the parameters' gradients summed (the transition head's bias aside: the
    batch also scores the steps past a sentence's end)."""
    parts = []
    for b, n in enumerate(lengths.tolist()):
        one = (words[b : b + 1, :n], transitions[b : b + 1, : 2 * n - 1], lengths[b : b + 1])
        parts.append(run(model, *one, engine=True)[0])
    out = {"h": torch.cat([p["h"] for p in parts])}
    out |= {f"logits {b}": p["logits"] for b, p in enumerate(parts)}
    params = [k for k, _ in model.named_parameters() if k != "transition_head.bias"]
    return out | {k: sum(p[k] for p in parts) for k in params}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("composition", "leaf"), [("treelstm", "gru"), ("treegru", "projection"), ("tanh", "bilstm")]
)
def test_every_composition_gives_each_sentence_what_it_gives_it_alone(variant, composition, leaf):
    """The reference runs the compositions the engine does not: batched, each sentence's vector and its
    share of every gradient are those of the sentence encoded alone."""
    model = make(variant, composition, leaf)
    words, transitions, lengths = float64_batch([5, 1, 14, 3, 80], seed=4)
    batched, path = run(model, words, transitions, lengths, engine=True)
    assert path == ("engine" if composition == "treelstm" else "reference")
    alone = sentence_by_sentence(model, words, transitions, lengths)
    for b, n in enumerate(lengths.tolist()):
        logits = batched["logits"]
        batched[f"logits {b}"] = None if logits is None else logits[b : b + 1, : 2 * n - 1]
    assert_same({k: batched[k] for k in alone}, alone, atol=1e-10)


@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_without_a_tracker_a_sentence_is_its_tree_composed(composition):
    """The root of ((0 1) (2 3)) is reduce(reduce(0, 1), reduce(2, 3)) of the leaves."""
    model = make("spinn_pi_nt", composition)
    words = torch.randn(1, 4, 7, dtype=torch.double)
    leaves = model.leaf(words[0], torch.tensor([4]))
    left = model.reduce(leaves[0:1], leaves[1:2], None)
    right = model.reduce(leaves[2:3], leaves[3:4], None)
    root = model.reduce(left, right, None)[:, : model.d_hidden]
    out = model(words, torch.tensor([[0, 0, 1, 0, 0, 1, 1]]), torch.tensor([4])).h
    torch.testing.assert_close(out, root, atol=1e-12, rtol=0)


@pytest.mark.parametrize("leaf", ["lstm", "gru", "bilstm"])
def test_a_sequential_leaf_sees_its_own_sentence_only(leaf):
    """Word i's leaf depends on the words before it (and after it, bidirectional), never on another
    sentence's or on padding."""
    model = make("spinn_pi_nt", leaf=leaf).float()
    encoder = model.leaf
    words = torch.randn(7, 7)
    lengths = torch.tensor([3, 4])
    leaves = encoder(words, lengths)
    changed = words.clone()
    changed[4] += 1  # the second word of sentence 1
    after = encoder(changed, lengths)
    assert torch.equal(after[:3], leaves[:3])
    assert torch.equal(after[3], leaves[3]) != (leaf == "bilstm")
    assert not torch.equal(after[4:], leaves[4:])


def test_unknown_options_and_cells_without_a_state_size_are_refused():
    with pytest.raises(SpinnError, match="composition 'treelsm' is unknown, expected one of treelstm"):
        SPINN(7, 6, composition="treelsm")
    with pytest.raises(SpinnError, match="leaf 'cnn' is unknown, expected one of projection, lstm"):
        SPINN(7, 6, leaf="cnn")
    with pytest.raises(SpinnError, match="composition Linear has no int d_state"):
        SPINN(7, 6, composition=torch.nn.Linear(12, 6))
    with pytest.raises(SpinnError, match="d_state 5 is odd"):
        SPINN(7, 5, composition="tanh", leaf="bilstm")


def test_the_config_builds_each_option_and_every_parameter_learns():
    cfg = load_config(
        None,
        ["model.composition=treegru", "model.leaf=bilstm", "model.variant=spinn", "model.d_hidden=8"]
        + ["model.d_embed=7", "model.d_tracker=4", "model.mlp_dim=8", "vocab.glove=null"]
        + ["model.freeze_embeddings=false"],
    )
    model = build_model(cfg, vocab_size=20)
    assert type(model.encoder.reduce).__name__ == "TreeGRU"
    assert model.encoder.leaf.rnn.bidirectional
    words, transitions, lengths, _ = random_batch([4, 1, 6], 7, seed=1)
    out = model.encoder(words, transitions, lengths)
    (out.h.sum() + out.transition_loss).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
