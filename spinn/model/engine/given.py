"""The engine's entry for given transitions: one autograd Function over the whole step loop."""

from __future__ import annotations

import torch
from torch import Tensor

from spinn.model.cells import Kernels
from spinn.model.engine.backward import backward_loop
from spinn.model.engine.forward import Saved, forward_loop
from spinn.schedule import Schedule


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on any of the tensors: where it does not (evaluation), the step
    loops run outside autograd."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# torch.compile would trace the step loop for each batch shape (it unrolls over the steps): it runs
# as it is, and a compiled model compiles what surrounds it (embeddings, MLP, loss).
@torch.compiler.disable
def encode_given(
    leaves: Tensor,
    reduce_weight: Tensor,
    reduce_bias: Tensor,
    tracker_weight: Tensor | None,
    tracker_bias: Tensor | None,
    schedule: Schedule,
    tracker_states: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Run the stock SPINN over the given transitions.

    Args:
        leaves: (W, 2 D) the [h; c] of the real words, in the order of ``schedule.leaf_rows``.
        reduce_weight, reduce_bias: the Reduce's (5 D, 2 D + d_tracker) and (5 D,).
        tracker_weight, tracker_bias: the Tracker's (4 d_tracker, 3 D + d_tracker) and (4 d_tracker,), or
            None for SPINN-PI-NT, which is composed level by level.
        schedule: `build_schedule` of the batch, on the leaves' device.
        tracker_states: also return the Tracker's states (what the full SPINN scores transitions from).

    Returns:
        (B, D) the h of each sentence's root, and with ``tracker_states`` (T, B, d_tracker) the
        Tracker's h after each step, 0 after a sentence's last step (else None).
    """
    # One dtype throughout (the leaves', bf16 under autocast); the casts keep the weights' gradients.
    dtype = leaves.dtype
    weights = [
        None if w is None else w.to(dtype) for w in (reduce_weight, reduce_bias, tracker_weight, tracker_bias)
    ]
    with torch.autocast(leaves.device.type, enabled=False):
        if needs_grad(leaves, *weights):
            root_h, tracker_h = Encode.apply(leaves, *weights, schedule, tracker_states)
        else:
            root_h, tracker_h, _ = forward_loop(leaves, Kernels(*weights), schedule, False, tracker_states)
    return root_h, (tracker_h if tracker_states else None)


class Encode(torch.autograd.Function):
    """The step loop as one autograd node: `forward_loop` keeping what `backward_loop` reads."""

    @staticmethod
    def forward(ctx, leaves, w_r, b_r, w_t, b_t, schedule: Schedule, tracker_states: bool):
        root_h, tracker_h, saved = forward_loop(
            leaves, Kernels(w_r, b_r, w_t, b_t), schedule, True, tracker_states
        )
        ctx.set_materialize_grads(False)  # no zeros made for the Tracker's states nobody reads
        ctx.schedule = schedule
        ctx.save_for_backward(w_r, w_t, *saved)
        return root_h, tracker_h

    @staticmethod
    def backward(ctx, g_root, g_tracker):
        w_r, w_t, *saved = ctx.saved_tensors
        grads = backward_loop(Saved(*saved), w_r, w_t, ctx.schedule, g_root, g_tracker)
        return *grads, None, None
