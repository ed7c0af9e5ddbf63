"""The stock cells -- the Tracker LSTM and the TreeLSTM Reduce -- and the engine's kernels for them.

Each cell's gate layout is written once, as a NamedTuple (`TrackerGates`, `ReduceGates`): the modules'
``forward`` (what the reference calls) and the engine's in-place kernels (`Kernels`) both name the
gates through it, and the engine's weight blocks are cut by the same layout.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class TrackerGates(NamedTuple):
    """The Tracker's gate blocks, in the order of its weight's rows: input, forget, candidate, output."""

    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


class ReduceGates(NamedTuple):
    """The TreeLSTM's gate blocks, in the order of its weight's rows: input, a forget gate per child,
    output, candidate."""

    i: Tensor
    f_left: Tensor
    f_right: Tensor
    o: Tensor
    g: Tensor


def split_gates(z: Tensor, layout: type[TrackerGates] | type[ReduceGates]):
    """z (..., n D) as the n gate blocks of ``layout`` (views)."""
    return layout(*z.split(z.shape[-1] // len(layout._fields), dim=-1))


class Tracker(nn.Module):
    """An LSTM cell over [buffer top; stack top; second item] (their h), all gates in one matmul.

    ``z = W [x; h] + b`` split into `TrackerGates`; ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
    ``h' = sigmoid(o) * tanh(c')``.

    Args:
        d_hidden: size of the node states h.
        d_tracker: size of the Tracker's own state.
    """

    def __init__(self, d_hidden: int, d_tracker: int) -> None:
        super().__init__()
        self.d_tracker = d_tracker
        self.gates = nn.Linear(3 * d_hidden + d_tracker, 4 * d_tracker)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """x (B, 3 d_hidden), state (h, c) each (B, d_tracker) -> the new (h, c)."""
        h, c = state
        z = self.gates(torch.cat((x, h), dim=1))
        # One sigmoid over all the gates (the one over g is unused): fewer, larger kernels.
        act = split_gates(torch.sigmoid(z), TrackerGates)
        c = torch.addcmul(act.f * c, act.i, torch.tanh(split_gates(z, TrackerGates).g))
        return act.o * torch.tanh(c), c


class Reduce(nn.Module):
    """TreeLSTM composition (Tai et al. 2015) with a forget gate per child, all gates in one matmul.

    A node's state is ``[h; c]``. ``z = W [h_left; h_right; e] + b`` split into `ReduceGates`;
    ``c = sigmoid(f_left) * c_left + sigmoid(f_right) * c_right + sigmoid(i) * tanh(g)``,
    ``h = sigmoid(o) * tanh(c)``. e is the Tracker's h when there is a Tracker.

    Args:
        d_hidden: size of h and of c.
        d_tracker: size of the Tracker's h, or None without a Tracker.
    """

    def __init__(self, d_hidden: int, d_tracker: int | None = None) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.d_state = 2 * d_hidden
        self.gates = nn.Linear(2 * d_hidden + (d_tracker or 0), 5 * d_hidden)
        # Forget gates start open (bias +1, sigmoid 0.73; Gers et al. 2000, Jozefowicz et al. 2015) so
        # that the cells of deep words reach the root early in training (README, Results).
        with torch.no_grad():
            bias = split_gates(self.gates.bias, ReduceGates)
            bias.f_left.add_(1.0)
            bias.f_right.add_(1.0)

    def forward(self, left: Tensor, right: Tensor, tracking: Tensor | None = None) -> Tensor:
        """left, right (M, 2 d_hidden) as [h; c], tracking (M, d_tracker) or None -> (M, 2 d_hidden)."""
        d = self.d_hidden
        x = (left[:, :d], right[:, :d]) if tracking is None else (left[:, :d], right[:, :d], tracking)
        z = self.gates(torch.cat(x, dim=1))
        act = split_gates(torch.sigmoid(z), ReduceGates)  # the one over g is unused, as in the Tracker
        c = torch.addcmul(act.i * torch.tanh(split_gates(z, ReduceGates).g), act.f_left, left[:, d:])
        c = torch.addcmul(c, act.f_right, right[:, d:])
        return torch.cat((act.o * torch.tanh(c), c), dim=1)


def double_gate(w: Tensor, layout: type[TrackerGates] | type[ReduceGates]) -> Tensor:
    """w (or a bias) with the rows of the candidate gate g doubled, so that one sigmoid over all the
    gates gives sigmoid(2 z) for g, and tanh(z) = 2 sigmoid(2 z) - 1 needs no separate kernel."""
    n_gates = len(layout._fields)
    scale = w.new_ones(n_gates, w.shape[0] // n_gates)
    scale[layout._fields.index("g")] = 2
    return w * scale.view(-1, *(1,) * (w.dim() - 1))


def forget_pair(x: Tensor) -> Tensor:
    """The forget gates' blocks of x (M, 5 D) as one (M, 2, D) view: f_left and f_right are adjacent in
    `ReduceGates`, so both children's terms are one elementwise op."""
    m, d = x.shape[0], x.shape[1] // 5
    first = ReduceGates._fields.index("f_left")
    return x[:, first * d : (first + 2) * d].view(m, 2, d)


def reduce_blocks(w: Tensor) -> tuple[Tensor, Tensor]:
    """Reduce's weight (5 D, 2 D + d_tracker) as its columns for [h_left; h_right] and for the Tracker."""
    d = w.shape[0] // 5
    return w[:, : 2 * d], w[:, 2 * d :]


def tracker_blocks(w: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """The Tracker's weight (4 d_tracker, 3 D + d_tracker) as its columns for the buffer top, for
    [stack top; second] and for its own h."""
    return w[:, :d], w[:, d : 3 * d], w[:, 3 * d :]


def one_minus_square(a: Tensor, out: Tensor) -> Tensor:
    """1 - a^2 into out: the derivative of tanh from its value."""
    return torch.mul(a, a, out=out).neg_().add_(1)


def activation_grads(act: Tensor, layout: type[TrackerGates] | type[ReduceGates], out: Tensor) -> Tensor:
    """The derivative of each gate's activation from its value a, into out: a (1 - a) for the sigmoids,
    1 - a^2 for the candidate gate g (a tanh)."""
    torch.sub(act, torch.mul(act, act, out=out), out=out)
    one_minus_square(split_gates(act, layout).g, out=split_gates(out, layout).g)
    return out


class Kernels:
    """The Tracker's and Reduce's cells as the engine's step loops run them: weights transposed for
    `torch.addmm`, the rows of each candidate gate doubled (`double_gate`), the constants 0-dim
    tensors, and the elementwise part of each cell written into buffers the caller owns."""

    def __init__(self, w_r: Tensor, b_r: Tensor, w_t: Tensor | None, b_t: Tensor | None) -> None:
        d = w_r.shape[0] // 5
        self.two, self.one = w_r.new_full((), 2.0), w_r.new_full((), 1.0)  # filled on the device
        # torch's float32 tanh on the CPU is several times slower than its sigmoid; elsewhere (a GPU,
        # bf16) its kernel is one launch instead of four, and more accurate near 0 in bf16.
        self.sigmoid_tanh = w_r.device.type == "cpu" and w_r.dtype == torch.float32
        self.reduce_bias = double_gate(b_r, ReduceGates)
        self.reduce_children, self.reduce_tracker = (
            w.t() for w in reduce_blocks(double_gate(w_r, ReduceGates))
        )
        self.tracked = w_t is not None
        self.d_tracker = w_t.shape[0] // 4 if self.tracked else 0
        if self.tracked:
            self.tracker_bias = double_gate(b_t, TrackerGates)
            self.tracker_buffer, self.tracker_stack, self.tracker_hidden = (
                w.t() for w in tracker_blocks(double_gate(w_t, TrackerGates), d)
            )

    def tanh(self, x: Tensor, out: Tensor) -> Tensor:
        """tanh(x) into out: torch's kernel, or for float32 on the CPU 2 sigmoid(2 x) - 1 (equal to
        float32 rounding; the constants are 0-dim tensors: an in-place op with a Python number costs
        twice as much on the CPU)."""
        if not self.sigmoid_tanh:
            return torch.tanh(x, out=out)
        return torch.mul(x, self.two, out=out).sigmoid_().mul_(self.two).sub_(self.one)

    def buffer_gates(self, leaf_h: Tensor, out: Tensor) -> Tensor:
        """The buffer top's share of the Tracker's gates and their bias into out (1 + W, 4 d_tracker),
        for every leaf (a buffer top is always one) in one matmul; row 0, an empty buffer, holds the
        bias alone."""
        out[0] = self.tracker_bias
        torch.addmm(self.tracker_bias, leaf_h, self.tracker_buffer, out=out[1:])
        return out

    def tracker(
        self, z: Tensor, gates: TrackerGates, c_prev: Tensor, c_new: Tensor, h_new: Tensor, tanh_c: Tensor
    ) -> None:
        """The LSTM cell from the pre-activations z, whose gate views are ``gates``: the activations in
        place, c into c_new, h into h_new and tanh(c) into tanh_c."""
        z.sigmoid_()
        gates.g.mul_(self.two).sub_(self.one)  # tanh
        torch.mul(gates.i, gates.g, out=c_new).addcmul_(gates.f, c_prev)
        torch.mul(gates.o, self.tanh(c_new, tanh_c), out=h_new)

    def reduce(
        self,
        z: Tensor,
        gates: ReduceGates,
        c_left: Tensor,
        c_right: Tensor,
        c_new: Tensor,
        h_new: Tensor,
        tanh_c: Tensor,
    ) -> None:
        """The TreeLSTM cell from the pre-activations z, whose gate views are ``gates``: the activations
        in place, c into c_new, h into h_new and tanh(c) into tanh_c."""
        z.sigmoid_()
        gates.g.mul_(self.two).sub_(self.one)  # tanh
        torch.mul(gates.i, gates.g, out=c_new).addcmul_(gates.f_left, c_left).addcmul_(gates.f_right, c_right)
        torch.mul(gates.o, self.tanh(c_new, tanh_c), out=h_new)
