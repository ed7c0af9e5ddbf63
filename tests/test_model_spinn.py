"""The batched SPINN's engine against the reference (`spinn.model.reference`), batch invariance,
predicted parses, gradients."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from spinn import pad_sentences
from spinn.errors import ParseError, SpinnError
from spinn.model import SPINN, Reduce, build_schedule
from spinn.transitions import (
    PAD,
    REDUCE,
    SHIFT,
    balanced,
    parse_to_transitions,
    right_branching,
    validate_transitions,
)


def read_parses(path: Path, n: int) -> list[tuple[list[str], list[int]]]:
    """The first n premises and hypotheses of an SNLI jsonl file, as (words, transitions)."""
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            for key in ("sentence1_binary_parse", "sentence2_binary_parse"):
                words, trans = parse_to_transitions(row[key])
                out.append((words, [int(t) for t in trans]))
            if len(out) >= n:
                break
    return out[:n]


VARIANTS = {"spinn_pi_nt": (None, False), "spinn_pi": (6, False), "spinn": (6, True)}


def make_model(variant: str, d_input: int = 7, d_hidden: int = 5, seed: int = 0) -> SPINN:
    torch.manual_seed(seed)
    d_tracker, predict = VARIANTS[variant]
    return SPINN(d_input, d_hidden, d_tracker, predict)


def random_transitions(n: int, rng: random.Random) -> list[int]:
    """A uniformly chosen valid sequence step by step: any allowed move with equal odds."""
    out, depth, shifted = [], 0, 0
    while len(out) < 2 * n - 1:
        moves = ([SHIFT] if shifted < n else []) + ([REDUCE] if depth >= 2 else [])
        move = rng.choice(moves)
        out.append(int(move))
        depth += 1 if move == SHIFT else -1
        shifted += move == SHIFT
    return out


def random_batch(lengths: list[int], d_input: int, seed: int):
    rng = random.Random(seed)
    transitions = [random_transitions(n, rng) for n in lengths]
    s = pad_sentences([[1] * n for n in lengths], transitions)
    torch.manual_seed(seed)
    words = torch.randn(len(lengths), s.tokens.shape[1], d_input)
    return words, s.transitions, s.lengths, transitions


def loss_and_grads(model: SPINN, h: Tensor, logits: Tensor | None, targets: Tensor | None):
    """A loss touching every output: weighted h, plus the transition cross-entropy for a full SPINN."""
    model.zero_grad()
    weight = torch.linspace(-1, 1, h.numel()).view_as(h)
    loss = (h * weight).sum()
    if logits is not None:
        loss = loss + torch.nn.functional.cross_entropy(logits, targets)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def check_against_reference(variant: str, words, transitions, lengths, atol=1e-5):
    """The engine (with and without a gradient) against the reference, `spinn.model.reference`."""
    model = make_model(variant, d_input=words.shape[2])
    real = transitions[transitions != PAD]

    def run(engine: bool):
        model.use_engine = engine
        out = model(words, transitions, lengths, use_given_transitions=True)
        assert model.last_path == ("engine" if engine else "reference")
        logits = None if out.transition_logits is None else out.transition_logits[transitions != PAD]
        return out, logits, loss_and_grads(model, out.h, logits, real)

    (out, logits, grads), (ref, ref_logits, ref_grads) = run(True), run(False)
    torch.testing.assert_close(out.h, ref.h, atol=atol, rtol=1e-5)
    model.use_engine = True
    with torch.no_grad():  # evaluation takes another route: outside autograd, nothing kept for a backward
        out_no_grad = model(words, transitions, lengths, use_given_transitions=True)
    torch.testing.assert_close(out_no_grad.h, ref.h, atol=atol, rtol=1e-5)
    if ref_logits is not None:
        torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=1e-5)
        no_grad_logits = out_no_grad.transition_logits[transitions != PAD]
        torch.testing.assert_close(no_grad_logits, ref_logits, atol=atol, rtol=1e-5)
        assert out.transition_loss.item() == pytest.approx(ref.transition_loss.item(), abs=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=atol, rtol=1e-5, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_trees(variant, seed):
    lengths = random.Random(seed).choices(range(1, 15), k=7)
    words, transitions, lengths_t, _ = random_batch(lengths, 7, seed)
    check_against_reference(variant, words, transitions, lengths_t)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_reference_on_real_parses(variant, data_dir):
    parses = read_parses(data_dir / "snli_1.0" / "snli_1.0_dev.jsonl", 24)
    s = pad_sentences([[1] * len(w) for w, _ in parses], [t for _, t in parses])
    torch.manual_seed(3)
    words = torch.randn(len(parses), s.tokens.shape[1], 7)
    check_against_reference(variant, words, s.transitions, s.lengths)


@pytest.mark.parametrize(
    "variant, follow_predictions",
    [("spinn_pi_nt", False), ("spinn_pi", False), ("spinn", False), ("spinn", True)],
)
def test_padding_does_not_change_an_example(variant, follow_predictions):
    words, transitions, lengths, _ = random_batch([9, 2, 17, 1, 9, 12], 7, seed=5)
    model = make_model(variant).eval()
    with torch.no_grad():
        batched = model(words, transitions, lengths, use_given_transitions=not follow_predictions)
        for b in range(len(lengths)):
            n = int(lengths[b])
            alone = model(
                words[b : b + 1, :n],
                transitions[b : b + 1, : 2 * n - 1],
                lengths[b : b + 1],
                use_given_transitions=not follow_predictions,
            )
            torch.testing.assert_close(alone.h[0], batched.h[b], atol=1e-6, rtol=0)
            if alone.transition_logits is not None:
                torch.testing.assert_close(
                    alone.transition_logits[0], batched.transition_logits[b, : 2 * n - 1], atol=1e-6, rtol=0
                )
                assert torch.equal(
                    alone.predicted_transitions[0], batched.predicted_transitions[b, : 2 * n - 1]
                )


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    reduce_bias=st.floats(-8, 8),
)
def test_predicted_transitions_are_always_valid(lengths, seed, reduce_bias):
    model = make_model("spinn", seed=seed).eval()
    with torch.no_grad():
        model.transition_head.bias[1] += reduce_bias  # from "always SHIFT" to "always REDUCE"
        n_words = max(lengths)
        words = torch.randn(len(lengths), n_words, 7)
        out = model(words, None, torch.tensor(lengths))
    assert out.transition_loss is None
    for b, n in enumerate(lengths):
        seq = out.predicted_transitions[b].tolist()
        validate_transitions(seq[: 2 * n - 1], n)
        assert all(t == PAD for t in seq[2 * n - 1 :])


@pytest.mark.slow
def test_transition_loss_is_positive_and_falls_with_training(data_dir):
    parses = read_parses(data_dir / "snli_1.0" / "snli_1.0_train_0.01.jsonl", 16)
    s = pad_sentences([[1] * len(w) for w, _ in parses], [t for _, t in parses])
    model = make_model("spinn")
    torch.manual_seed(0)
    words = torch.randn(len(parses), s.tokens.shape[1], 7)
    optim = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        loss = model(words, s.transitions, s.lengths).transition_loss
        losses.append(loss.item())
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert losses[0] > 0.3
    assert min(losses[-5:]) < 0.6 * losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant):
    model = make_model(variant, d_input=3, d_hidden=2).double()
    words, transitions, lengths, _ = random_batch([3, 1, 4], 3, seed=7)
    words = words.double().requires_grad_()

    def encode(w):
        out = model(w, transitions, lengths, use_given_transitions=True)
        return out.h if out.transition_logits is None else (out.h, out.transition_logits)

    assert torch.autograd.gradcheck(encode, (words,), eps=1e-6, atol=1e-5)


def test_schedule_composes_a_level_at_a_time():
    s = pad_sentences([[1] * 8, [1] * 5], [balanced(8), right_branching(5)])
    schedule = build_schedule(s.transitions, s.lengths)
    # Tree heights 3 and 4: four batched calls, the first three composing nodes of both trees.
    assert schedule.level_offsets == [0, 5, 8, 10, 11]
    assert schedule.step_offsets[-1] == 7 + 4


@pytest.mark.parametrize(
    "transitions, lengths, message",
    [
        ([[REDUCE, SHIFT, SHIFT]], [2], "REDUCE with < 2 stack items"),
        ([[SHIFT, SHIFT, SHIFT]], [2], "SHIFT with an empty buffer"),
        ([[SHIFT, SHIFT, REDUCE]], [1], "transition 1 is 0, expected PAD"),
        ([[SHIFT, PAD, PAD]], [2], "transition 1 is 2, expected SHIFT/REDUCE"),
        ([[0, 0, 0, 7, 1]], [3], r"transition 3: 7, expected SHIFT \(0\), REDUCE \(1\) or PAD \(2\)"),
        ([[0, -1, 1]], [2], "transition 1: -1, expected SHIFT"),
    ],
)
def test_invalid_transitions_are_reported(transitions, lengths, message):
    with pytest.raises(ParseError, match=message):
        build_schedule(torch.tensor(transitions), torch.tensor(lengths))


def test_mismatched_shapes_are_reported():
    model = make_model("spinn_pi")
    words, transitions, lengths, _ = random_batch([3, 2], 7, seed=0)
    with pytest.raises(SpinnError, match=r"expected \(batch, words, 7\)"):
        model(words[:, :, :4], transitions, lengths)
    with pytest.raises(SpinnError, match=r"expected \(2, 5\)"):
        model(words, transitions[:, :3], lengths)
    with pytest.raises(SpinnError, match="needs a Tracker"):
        SPINN(7, 5, None, predict_transitions=True)
    with pytest.raises(SpinnError, match="d_tracker: expected a size >= 1 .* found 0"):
        SPINN(7, 5, 0)


@pytest.mark.parametrize(
    "variant, follow_predictions, grad",
    [
        ("spinn_pi_nt", False, True),
        ("spinn_pi", False, True),
        ("spinn_pi", False, False),
        ("spinn", False, True),
        ("spinn", True, True),
        ("spinn", True, False),
    ],
)
def test_packed_real_words_give_what_padded_words_give(variant, follow_predictions, grad):
    words, transitions, lengths, _ = random_batch([9, 2, 17, 1, 9, 12], 7, seed=6)
    real = torch.arange(words.shape[1]) < lengths[:, None]
    packed = words[real].clone()  # sentence after sentence
    model = make_model(variant)

    def run(w: Tensor) -> dict[str, Tensor | None]:
        w = w.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = model(w, transitions, lengths, use_given_transitions=not follow_predictions)
        got = {"h": out.h, "logits": out.transition_logits, "predicted": out.predicted_transitions}
        if grad:
            model.zero_grad()
            logits = out.transition_logits
            (out.h.square().sum() + (0 if logits is None else logits.square().sum())).backward()
            got |= {name: p.grad.clone() for name, p in model.named_parameters()}
            got["words"] = w.grad[real] if w.dim() == 3 else w.grad
        return got

    from_padded, from_packed = run(words), run(packed)
    assert from_padded.keys() == from_packed.keys()
    for key, value in from_padded.items():
        if value is None:
            assert from_packed[key] is None, key
        else:
            torch.testing.assert_close(from_packed[key], value, atol=1e-6, rtol=1e-5, msg=key)
    if grad:
        assert from_padded["words"].abs().sum() > 0


def test_packed_words_of_the_wrong_count_are_reported():
    model = make_model("spinn")
    words, transitions, lengths, _ = random_batch([3, 2], 7, seed=0)
    packed = words[torch.arange(words.shape[1]) < lengths[:, None]]
    for use_given, grad in ((True, True), (False, True), (False, False)):
        with (
            torch.set_grad_enabled(grad),
            pytest.raises(SpinnError, match="words have 4 rows, expected one per real word: 5"),
        ):
            model(packed[:4], transitions, lengths, use_given_transitions=use_given)
    with pytest.raises(SpinnError, match=r"transitions have shape \(2, 4\), expected \(2, 2 N - 1\)"):
        model(packed, transitions[:, :4], lengths)
    with pytest.raises(SpinnError, match=r"lengths have shape \(\), expected \(batch,\)"):
        model(packed, transitions, lengths.sum())
    with pytest.raises(SpinnError, match="lengths is empty"):
        model(packed[:0], None, lengths[:0])


@pytest.mark.parametrize("grad", [True, False])
def test_lengths_out_of_range_are_reported_when_the_model_parses(grad):
    model = make_model("spinn").eval()
    words = torch.randn(2, 3, 7)
    with torch.set_grad_enabled(grad):
        with pytest.raises(SpinnError, match=r"sentence 1 of the batch has length 0, expected 1..3"):
            model(words, None, torch.tensor([3, 0]))
        with pytest.raises(SpinnError, match=r"sentence 0 of the batch has length 4, expected 1..3"):
            model(words, None, torch.tensor([4, 3]))
        with pytest.raises(SpinnError, match="words have 6 rows, expected one per real word: 7"):
            model(words.view(6, 7), None, torch.tensor([4, 3]))


def test_a_precomputed_schedule_gives_the_same_result():
    model = make_model("spinn_pi")
    words, transitions, lengths, _ = random_batch([5, 3, 8], 7, seed=2)
    schedule = build_schedule(transitions, lengths)
    assert torch.equal(
        model(words, transitions, lengths, schedule=schedule).h, model(words, transitions, lengths).h
    )
    other = build_schedule(transitions[:2], lengths[:2])
    with pytest.raises(SpinnError, match="schedule is for 2 sentences of 8 words, the batch has 3"):
        model(words, transitions, lengths, schedule=other)


def test_a_schedule_built_from_other_transitions_is_refused():
    model = make_model("spinn")
    words, transitions, lengths, _ = random_batch([5, 3, 8], 7, seed=2)
    schedule = build_schedule(transitions, lengths)
    other = transitions.clone()
    other[2] = torch.tensor(right_branching(8))  # the same shape, another tree
    assert not torch.equal(other, transitions)
    with pytest.raises(
        SpinnError, match=r"built from other transitions .*\(first at sentence 2 of the batch"
    ):
        model(words, other, lengths, schedule=schedule)
    # The same lengths' shape with another split of the words between the sentences.
    trees = [transitions[0, :9].tolist(), balanced(4), transitions[2].tolist()]
    shorter = pad_sentences([[1] * 5, [1] * 4, [1] * 8], trees)
    with pytest.raises(SpinnError, match=r"built from other transitions .*\(first at sentence 1 "):
        model(words, shorter.transitions, shorter.lengths, schedule=schedule)
    with pytest.raises(SpinnError, match=r"built from other lengths .*\(first at sentence 1 "):
        schedule.check_matches(transitions, shorter.lengths)
    # Refilling the tensors it was built from, in place, does not fool the check.
    given = transitions.clone()
    schedule = build_schedule(given, lengths)
    given.copy_(other)
    with pytest.raises(SpinnError, match="built from other transitions"):
        model(words, given, lengths, schedule=schedule)


@pytest.mark.parametrize("variant", ["spinn_pi_nt", "spinn"])
def test_lengths_and_transitions_given_as_lists_work_as_tensors(variant):
    model = make_model(variant)
    words, transitions, lengths, _ = random_batch([5, 3, 8], 7, seed=3)
    expected = model(words, transitions, lengths)
    as_lists = (transitions.tolist(), lengths.tolist())
    for given_transitions, given_lengths in ((as_lists[0], lengths), (transitions, as_lists[1]), as_lists):
        assert torch.equal(model(words, given_transitions, given_lengths).h, expected.h)
    assert torch.equal(
        build_schedule(transitions.tolist(), lengths.tolist()).step_children,
        build_schedule(transitions, lengths).step_children,
    )


@pytest.mark.parametrize(
    "transitions, lengths, message",
    [
        (None, [3.0, 2.0], "lengths: expected integers, found torch.float32"),
        (None, torch.tensor([3.0, 2.0]), "lengths: expected integers, found a tensor of torch.float32"),
        ([[0, 0, 1]], [3, 2], r"transitions have shape \(1, 3\), expected \(2, 5\)"),
        (
            [[0, 0, 1, 0, 1], [0, 0, 1]],
            [3, 2],
            "transitions: expected a tensor or a rectangular list of ints",
        ),
        (None, [3], r"lengths have shape \(1,\), expected \(2,\)"),
        (None, "32", "lengths: expected a tensor or a rectangular list of ints"),
    ],
)
def test_lengths_and_transitions_that_are_not_int_arrays_are_reported(transitions, lengths, message):
    model = make_model("spinn_pi")
    words, given, _, _ = random_batch([3, 2], 7, seed=0)
    with pytest.raises(SpinnError, match=message):
        model(words, given if transitions is None else transitions, lengths)
    with pytest.raises(SpinnError, match="words: expected a float tensor"):
        model(words.tolist(), given, [3, 2])


def test_reduce_starts_with_its_forget_gates_open():
    """Children's cells of 1 and zero h: open forget gates (bias +1) pass about 2 x sigmoid(1) = 1.46
    to the parent, where a zero bias would pass about 1."""
    torch.manual_seed(0)
    reduce = Reduce(64, d_tracker=8)
    child = torch.cat((torch.zeros(256, 64), torch.ones(256, 64)), dim=1)
    c = reduce(child, child, torch.zeros(256, 8))[:, 64:]
    assert 1.35 < c.mean().item() < 1.55


def follow_predictions_both_routes(model: SPINN, words: Tensor, transitions: Tensor, lengths: Tensor):
    """A full SPINN following its predictions: (the engine without a gradient, the reference with one)."""
    with torch.no_grad():
        fast = model(words, transitions, lengths, use_given_transitions=False)
    assert model.last_path == "engine"
    with torch.enable_grad():
        recorded = model(words.clone().requires_grad_(), transitions, lengths, use_given_transitions=False)
    assert model.last_path == "reference"
    assert recorded.h.requires_grad and not fast.h.requires_grad
    return fast, recorded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluation_without_gradients_matches_the_autograd_route(seed):
    lengths = [9, 2, 17, 1, 9, 12, 30, 5, 2]
    words, transitions, lengths_t, _ = random_batch(lengths, 7, seed=seed)
    # Two padding words past the longest sentence: steps nobody runs.
    words = torch.cat((words, torch.randn(len(lengths), 2, 7)), dim=1)
    transitions = torch.nn.functional.pad(transitions, (0, 4), value=int(PAD))
    model = make_model("spinn", seed=seed).eval()
    fast, recorded = follow_predictions_both_routes(model, words, transitions, lengths_t)
    assert torch.equal(fast.predicted_transitions, recorded.predicted_transitions)
    predicted = fast.predicted_transitions
    assert 0.2 < (predicted == REDUCE).sum() / (predicted != PAD).sum() < 0.5  # both moves are taken
    torch.testing.assert_close(fast.h, recorded.h, atol=1e-5, rtol=1e-5)
    # All steps, the padded ones (a zero state's scores) included.
    torch.testing.assert_close(fast.transition_logits, recorded.transition_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.transition_loss, recorded.transition_loss, atol=1e-6, rtol=1e-5)
    head_bias = model.transition_head.bias.detach()
    assert torch.equal(
        fast.transition_logits[predicted == PAD], head_bias.expand((predicted == PAD).sum(), 2)
    )


@pytest.mark.parametrize("favoured", [SHIFT, REDUCE])
def test_evaluation_without_gradients_matches_the_autograd_route_under_bf16_autocast(favoured):
    """bf16 rounds the two routes' sums differently, so a near tie could parse differently: a head
    biased towards one move (every SHIFT first, or every REDUCE as early as possible) fixes the parse."""
    words, transitions, lengths, _ = random_batch([9, 2, 17, 1, 12], 7, seed=4)
    model = make_model("spinn", seed=4).eval()
    with torch.no_grad():
        model.transition_head.bias[favoured] += 8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, recorded = follow_predictions_both_routes(model, words, transitions, lengths)
    assert fast.h.dtype == recorded.h.dtype == torch.bfloat16
    assert fast.transition_logits.dtype == recorded.transition_logits.dtype
    assert torch.equal(fast.predicted_transitions, recorded.predicted_transitions)
    torch.testing.assert_close(fast.h.float(), recorded.h.float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(
        fast.transition_logits.float(), recorded.transition_logits.float(), atol=0.1, rtol=0
    )


def test_evaluation_without_gradients_skips_autograd():
    """No gradient wanted (no_grad, or nothing requires one): the engine's route outside autograd is
    taken; with one, the reference."""
    model = make_model("spinn").eval()
    words, _, lengths, _ = random_batch([4, 6], 7, seed=1)
    with torch.no_grad():
        model(words, None, lengths)
    assert model.last_path == "engine"
    model.requires_grad_(False)
    model(words, None, lengths)
    assert model.last_path == "engine"
    model.requires_grad_(True)
    model(words, None, lengths)
    assert model.last_path == "reference"
