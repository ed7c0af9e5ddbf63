"""The reference (`spinn.model.reference`), the definition of SPINN: the engine agrees with it, and it
runs whatever cells a model holds -- a subclass of Reduce, a user's own module, hooks -- visibly."""

from __future__ import annotations

import logging

import pytest
import torch
from test_model_spinn import VARIANTS, make_model, random_batch
from torch import Tensor, nn

from spinn.model import SPINN, Reduce
from spinn.transitions import PAD


def run(model: SPINN, words: Tensor, transitions: Tensor, lengths: Tensor, *, engine: bool, given=True):
    """Outputs and gradients (parameters and words) of one call, on the engine or the reference."""
    model.use_engine = engine
    model.zero_grad()
    words = words.clone().requires_grad_(True)
    out = model(words, transitions, lengths, use_given_transitions=given)
    weight = torch.linspace(-1, 1, out.h.shape[1], dtype=out.h.dtype)  # the same for every sentence
    loss = (out.h * weight).sum()
    if out.transition_logits is not None:
        loss = loss + (out.transition_logits * torch.linspace(-1, 1, 2, dtype=out.h.dtype)).sum()
    loss.backward()
    got = {"h": out.h, "logits": out.transition_logits, "predicted": out.predicted_transitions}
    # A parameter nothing reached has no gradient on one path and zeros on the other.
    got |= {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()}
    got["words"] = words.grad
    return got, model.last_path


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if value is None or b[key] is None:
            assert value is None and b[key] is None, key
        elif value.dtype == torch.long:
            assert torch.equal(value, b[key]), key
        else:
            torch.testing.assert_close(value, b[key], atol=atol, rtol=0, msg=key)


def float64_batch(lengths: list[int], seed: int):
    words, transitions, lengths_t, _ = random_batch(lengths, 7, seed)
    return words.double(), transitions, lengths_t


BATCHES = {
    "random trees": [5, 1, 14, 3, 9, 1, 12],
    "one word": [1],
    "80 words": [80, 1, 80, 37],
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_the_engine_agrees_with_the_reference_in_float64(variant, batch):
    model = make_model(variant).double()
    words, transitions, lengths = float64_batch(BATCHES[batch], seed=len(batch))
    fast, fast_path = run(model, words, transitions, lengths, engine=True)
    spec, spec_path = run(model, words, transitions, lengths, engine=False)
    assert (fast_path, spec_path) == ("engine", "reference")
    assert_same(fast, spec, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_following_predictions_the_engine_agrees_with_the_reference_in_float64(seed):
    model = make_model("spinn", seed=seed).double().eval()
    words, transitions, lengths = float64_batch([9, 2, 17, 1, 30, 5], seed)
    with torch.no_grad():
        fast = model(words, transitions, lengths)
    assert model.last_path == "engine"
    spec, path = run(model, words, transitions, lengths, engine=True, given=False)  # with a gradient
    assert path == "reference"
    predicted = spec["predicted"]
    assert 0.2 < (predicted == 1).sum() / (predicted != PAD).sum() < 0.5  # both moves are taken
    assert torch.equal(fast.predicted_transitions, predicted)
    torch.testing.assert_close(fast.h, spec["h"].detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(fast.transition_logits, spec["logits"].detach(), atol=1e-10, rtol=0)
    assert spec["reduce.gates.weight"].abs().sum() > 0


def test_the_reference_composes_the_tree():
    """Without a Tracker a sentence's vector is its tree composed bottom up: the root of ((0 1) (2 3))
    is reduce(reduce(0, 1), reduce(2, 3)) of the leaves."""
    model = make_model("spinn_pi_nt").double()
    model.use_engine = False
    words = torch.randn(1, 4, 7, dtype=torch.double)
    transitions = torch.tensor([[0, 0, 1, 0, 0, 1, 1]])
    leaves = model.leaf(words[0])
    left = model.reduce(leaves[0:1], leaves[1:2], None)
    right = model.reduce(leaves[2:3], leaves[3:4], None)
    root = model.reduce(left, right, None)[:, : model.d_hidden]
    torch.testing.assert_close(model(words, transitions, torch.tensor([4])).h, root, atol=1e-12, rtol=0)


def test_the_reference_backward_is_linear_in_length():
    """Autograd keeps per-node tensors, not copies of a growing store: twice the words, about twice
    the saved memory (a store copied at every step would be four times)."""

    def saved_elements(n_words: int) -> int:
        model = make_model("spinn_pi")
        model.use_engine = False
        words, transitions, lengths, _ = random_batch([n_words], 7, seed=0)
        seen: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(words, transitions, lengths).h.sum().backward()
        return sum(seen.values())

    assert saved_elements(80) < 2.3 * saved_elements(40)


class SquashedReduce(Reduce):
    """The stock TreeLSTM with its output halved: a subclass whose forward differs."""

    def forward(self, left: Tensor, right: Tensor, tracking: Tensor | None = None) -> Tensor:
        return super().forward(left, right, tracking) / 2


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_subclass_of_reduce_runs(variant):
    model = make_model(variant)
    words, transitions, lengths, _ = random_batch([4, 1, 6], 7, seed=1)
    stock = model(words, transitions, lengths, use_given_transitions=True).h
    assert model.last_path == "engine"
    squashed = SquashedReduce(model.d_hidden, None if model.tracker is None else model.tracker.d_tracker)
    squashed.load_state_dict(model.reduce.state_dict())
    model.reduce = squashed
    out = model(words, transitions, lengths, use_given_transitions=True).h
    assert model.last_path == "reference"
    assert not torch.allclose(out[0], stock[0], atol=1e-3)
    assert torch.equal(out[1], stock[1])  # one word: no REDUCE


class MaxPoolCell(nn.Module):
    """A user's composition: h = max(W_l h_left, W_r h_right) (+ the Tracker's h projected)."""

    def __init__(self, d_hidden: int, d_tracker: int | None) -> None:
        super().__init__()
        self.d_state = d_hidden
        self.left, self.right = nn.Linear(d_hidden, d_hidden), nn.Linear(d_hidden, d_hidden)
        self.track = None if d_tracker is None else nn.Linear(d_tracker, d_hidden)

    def forward(self, left: Tensor, right: Tensor, tracking: Tensor | None) -> Tensor:
        h = torch.maximum(self.left(left), self.right(right))
        return h if tracking is None else h + self.track(tracking)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_user_cell_runs_and_gets_gradients(variant):
    d_tracker, predict = {"spinn_pi_nt": (None, False), "spinn_pi": (6, False), "spinn": (6, True)}[variant]
    torch.manual_seed(0)
    model = SPINN(7, 5, d_tracker, predict, composition=MaxPoolCell(5, d_tracker))
    words, transitions, lengths, _ = random_batch([4, 1, 6], 7, seed=1)
    out = model(words, transitions, lengths)
    assert model.last_path == "reference"
    loss = out.h.sum() + (0 if out.transition_loss is None else out.transition_loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Sentence 1 is one word: its vector is its leaf's h.
    leaf = model.leaf(words[1, :1])
    torch.testing.assert_close(out.h[1], leaf[0, :5])


def test_hooks_on_a_cell_send_the_call_to_the_reference():
    model = make_model("spinn_pi")
    words, transitions, lengths, _ = random_batch([4, 6], 7, seed=2)
    calls = []
    handle = model.reduce.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    out = model(words, transitions, lengths).h
    assert model.last_path == "reference" and sum(calls) == 3 + 5  # one per REDUCE
    handle.remove()
    torch.testing.assert_close(model(words, transitions, lengths).h, out, atol=1e-6, rtol=0)
    assert model.last_path == "engine"


def test_the_path_taken_is_logged_when_it_changes(caplog):
    model = make_model("spinn_pi")
    words, transitions, lengths, _ = random_batch([3, 2], 7, seed=3)
    with caplog.at_level(logging.DEBUG, logger="spinn.model"):
        model(words, transitions, lengths)
        model(words, transitions, lengths)
        model.reduce = SquashedReduce(5, 6)
        model(words, transitions, lengths)
    assert [r.getMessage() for r in caplog.records] == [
        "SPINN runs on the engine",
        "SPINN runs on the reference: reduce is a SquashedReduce, not the stock Reduce",
    ]
