"""The engine's bookkeeping: padding words are never projected or read, and the scratch memory the
backward keeps between calls never leaks into a gradient it returned."""

from __future__ import annotations

import pytest
import torch
from test_model_spinn import VARIANTS, make_model, random_batch

from spinn.model import build_schedule
from spinn.model.engine.memory import scratch, workspace


def _grads(model, words, transitions, lengths) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    words = words.clone().requires_grad_(True)
    out = model(words, transitions, lengths, use_given_transitions=True)
    loss = (out.h * torch.linspace(-1, 1, out.h.numel()).view_as(out.h)).sum()
    if out.transition_loss is not None:
        loss = loss + out.transition_loss
    loss.backward()
    return out.h.detach(), {"words": words.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_words_are_never_read(variant):
    model = make_model(variant)
    words, transitions, lengths, _ = random_batch([4, 1, 7, 2, 5], d_input=7, seed=3)
    padding = torch.arange(words.shape[1])[None, :] >= lengths[:, None]
    poisoned = words.masked_fill(padding[..., None], float("nan"))
    h, grads = _grads(model, words, transitions, lengths)
    h_nan, grads_nan = _grads(model, poisoned, transitions, lengths)
    torch.testing.assert_close(h_nan, h, rtol=0, atol=0)
    assert grads_nan["words"][padding].eq(0).all()
    for name in grads:
        torch.testing.assert_close(grads_nan[name], grads[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_later_backward_leaves_earlier_gradients_alone(variant):
    model = make_model(variant)
    first = random_batch([3, 6, 2], d_input=7, seed=0)
    _, grads = _grads(model, *first[:3])
    kept = {n: g.clone() for n, g in grads.items()}
    _grads(model, *random_batch([9, 4, 8, 8], d_input=7, seed=1)[:3])  # a larger batch: a new buffer
    _grads(model, *random_batch([2, 2], d_input=7, seed=2)[:3])  # a smaller one reuses it
    for name in kept:
        torch.testing.assert_close(grads[name], kept[name], rtol=0, atol=0, msg=name)


def test_the_schedule_lists_only_real_words():
    words, transitions, lengths, seqs = random_batch([3, 1, 4], d_input=2, seed=0)
    schedule = build_schedule(transitions, lengths)
    n = words.shape[1]
    assert schedule.leaf_rows.tolist() == [0, 1, 2, n, 2 * n, 2 * n + 1, 2 * n + 2, 2 * n + 3]
    assert schedule.leaf_ids.tolist() == [r + 1 for r in schedule.leaf_rows.tolist()]
    # The buffer top of each running sentence at each step, as 1 + its position among the real words.
    first_word = [0, 3, 4]  # position of each sentence's first word among the real words
    expected = []
    for t, running in enumerate(schedule.tracker_active):
        for b in schedule.tracker_order[:running].tolist():
            shifted = sum(1 for a in seqs[b][:t] if a == 0)
            expected.append(1 + first_word[b] + shifted if shifted < lengths[b] else 0)
    assert schedule.tracker_buffer.tolist() == expected


@pytest.mark.parametrize(
    "variant, follow_predictions",
    [("spinn_pi", False), ("spinn_pi_nt", False), ("spinn", False), ("spinn", True)],
)
def test_buffers_kept_between_batches_change_no_result(variant, follow_predictions):
    """Evaluation reuses one step's rows of its buffers, and their views, from batch to batch
    (`Scratch`), and takes the batch's tables (node stores, Tracker states) from the kept workspace:
    a batch gives the same result after a larger one made them grow, a larger one the same as from
    nothing kept, and what a batch returned is not overwritten by the next."""
    model = make_model(variant).eval()

    def encode(lengths, seed):
        words, transitions, lengths, _ = random_batch(lengths, 7, seed)
        with torch.no_grad():
            out = model(words, transitions, lengths, use_given_transitions=not follow_predictions)
        return out.h, out.transition_logits

    small, large = ([3, 5, 2], 0), ([9, 14, 1, 7, 12, 11, 4], 1)
    first = encode(*small)
    first_copy = [None if x is None else x.clone() for x in first]
    encode(small[0], 2)  # the same shapes: the same kept memory
    after_large = encode(*large)
    again = encode(*small)
    scratch.pools.clear()
    workspace.buffer = None
    fresh_large = encode(*large)
    for a, b in ((first, first_copy), (first, again), (after_large, fresh_large)):
        for x, y in zip(a, b, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)
