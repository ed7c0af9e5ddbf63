"""The encoder's loop over a precomputed `Schedule`: one autograd Function with a hand-written backward.

With given transitions every node id is known before the forward pass starts (`build_schedule`), so the
whole loop -- Tracker steps and REDUCEs -- is one `torch.autograd.Function`:

* the node states live in two stores ``h_store`` and ``c_store`` (R, D) written once per row, in
  place, outside autograd; rows are never overwritten, so the backward reads every child's c back;
* the forward keeps what the backward needs in buffers allocated once per batch: the gathered inputs
  of every matmul and the gate activations; when no gradient is needed (evaluation) it runs outside
  autograd and reuses one step's rows of those buffers at every step instead;
* tanh(z) is computed as 2 sigmoid(2 z) - 1 (torch's CPU tanh is several times slower than its
  sigmoid), the factor 2 folded into the weights of the tanh gate, so one sigmoid covers all gates;
* the backward walks the steps in reverse with gradient stores of the same layout, and computes the
  weight gradients at the end with one matmul over all steps instead of one per step (the per-step
  shapes are small, the single one runs near the machine's peak);
* the Tracker runs only on the sentences not yet finished: the schedule orders them longest first,
  so those are a prefix of the batch; its input from the buffer top (always a leaf) is computed for
  all leaves in one matmul before the loop.

Per step that is a handful of kernels and no autograd bookkeeping; the Python loop does not touch the
host beyond reading the precomputed offsets, so it is free of device synchronisation.

Gate layouts follow `spinn.model.spinn`: Reduce (i, f_left, f_right, o, g), Tracker (i, f, g, o).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from spinn.model.schedule import Schedule


def encode_given(
    leaves: Tensor,
    reduce_weight: Tensor,
    reduce_bias: Tensor,
    tracker_weight: Tensor | None,
    tracker_bias: Tensor | None,
    schedule: Schedule,
) -> tuple[Tensor, Tensor | None]:
    """Run SPINN over the given transitions.

    Args:
        leaves: (B N, 2 D) the leaves' [h; c], sentence-major (row b N + i is word i of sentence b).
        reduce_weight, reduce_bias: the Reduce's (5 D, 2 D + d_tracker) and (5 D,).
        tracker_weight, tracker_bias: the Tracker's (4 d_tracker, 3 D + d_tracker) and (4 d_tracker,), or
            None for SPINN-PI-NT, which is composed level by level.
        schedule: `build_schedule` of the batch, on the leaves' device.

    Returns:
        (B, D) the h of each sentence's root, and (T, B, d_tracker) the Tracker's h after each step,
        0 after a sentence's last step (None without a Tracker).
    """
    # One dtype throughout (the leaves', bf16 under autocast); the casts keep the weights' gradients.
    dtype = leaves.dtype
    weights = [
        None if w is None else w.to(dtype) for w in (reduce_weight, reduce_bias, tracker_weight, tracker_bias)
    ]
    with torch.autocast(leaves.device.type, enabled=False):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (leaves, *weights)):
            root_h, tracker_h = _Encode.apply(leaves, *weights, schedule)
        else:
            root_h, tracker_h, _ = _forward(leaves, *weights, schedule, keep=False)
    return root_h, (tracker_h if tracker_weight is not None else None)


def _split(x: Tensor, n: int) -> tuple[Tensor, ...]:
    return x.split(x.shape[-1] // n, dim=-1)


def _tanh(x: Tensor, out: Tensor, two: Tensor, one: Tensor) -> Tensor:
    """tanh(x) into out as 2 sigmoid(2 x) - 1: torch's CPU tanh kernel is several times slower than its
    sigmoid, and the two agree to float32 rounding. The constants are 0-dim tensors: an in-place op
    with a Python number costs twice as much on the CPU."""
    return torch.mul(x, two, out=out).sigmoid_().mul_(two).sub_(one)


def _double_gate(w: Tensor, n_gates: int, gate: int) -> Tensor:
    """w (or a bias) with the rows of one gate doubled, so that one sigmoid over all the gates gives
    sigmoid(2 z) for that gate, and tanh(z) = 2 sigmoid(2 z) - 1 needs no separate kernel."""
    scale = w.new_ones(n_gates, w.shape[0] // n_gates)
    scale[gate] = 2
    return w * scale.view(-1, *(1,) * (w.dim() - 1))


def _gather(store: Tensor, ids: Tensor) -> Tensor:
    """store[ids] along dim 0; F.embedding is torch's fastest row gather on the CPU."""
    return F.embedding(ids, store)


def _activation_grads(act: Tensor, n_gates: int, tanh_gate: int) -> Tensor:
    """The derivative of each gate's activation from its value a: a (1 - a) for the sigmoids, 1 - a^2
    for the tanh gate."""
    grads = torch.rsub(act, 1).mul_(act)
    a = _split(act, n_gates)[tanh_gate]
    torch.mul(a, a, out=_split(grads, n_gates)[tanh_gate]).neg_().add_(1)
    return grads


class _StepRows:
    """Where each step's rows go in the buffers the forward fills.

    With ``keep`` (the backward reads them) every step has its own rows, one step after another;
    otherwise (no gradient needed) one step's rows are reused at every step: a small buffer that stays
    in cache, instead of fresh memory the system has to fault in page by page at every batch.
    """

    def __init__(self, offsets: list[int], keep: bool) -> None:
        self.offsets = offsets
        self.keep = keep
        self.rows = offsets[-1] if keep else max((b - a for a, b in itertools.pairwise(offsets)), default=0)

    def span(self, t: int) -> tuple[int, int]:
        lo, hi = self.offsets[t], self.offsets[t + 1]
        return (lo, hi) if self.keep else (0, hi - lo)


def _forward(leaves, w_r, b_r, w_t, b_t, schedule: Schedule, keep: bool):
    """The loop. Returns the root h (B, D), the Tracker's h (T, B, d_tracker) in batch order (empty
    without a Tracker) and, with ``keep``, what the backward reads (see `_Encode.backward`)."""
    d = w_r.shape[0] // 5
    batch, n_words = schedule.batch_size, schedule.n_words
    tracked = w_t is not None
    dt = w_t.shape[0] // 4 if tracked else 0
    if tracked:
        pairs, out, offsets = schedule.step_children, schedule.step_out, schedule.step_offsets
    else:
        pairs, out, offsets = schedule.level_children, schedule.level_out, schedule.level_offsets
    n_steps = len(offsets) - 1
    leaves = leaves.detach()
    two, one = leaves.new_full((), 2.0), leaves.new_full((), 1.0)  # filled on the device: no host copy
    # Row 0 (the empty slot) is zeros and the leaves follow; every other row is written before it is read.
    h_store = leaves.new_empty(schedule.n_rows, d)  # (R, D)
    c_store = leaves.new_empty(schedule.n_rows, d)
    for store, part in ((h_store, leaves[:, :d]), (c_store, leaves[:, d:])):
        store[0] = 0
        store[1 : 1 + batch * n_words] = part
    reduces = _StepRows(offsets, keep)
    x = leaves.new_empty(reduces.rows, 2 * d)  # [h_left; h_right] of every REDUCE
    e = leaves.new_empty(reduces.rows, dt)  # the Tracker's h each REDUCE reads
    act = leaves.new_empty(reduces.rows, 5 * d)  # gate activations
    tanh_c = leaves.new_empty(reduces.rows, d)
    w_r = _double_gate(w_r, 5, 4)
    b_r = _double_gate(b_r, 5, 4)
    w_c, w_e = w_r[:, : 2 * d].t(), w_r[:, 2 * d :].t()
    if tracked:
        # The Tracker's rows, packed: step t holds the first active[t] sentences (longest first).
        active = schedule.tracker_active
        tracks = _StepRows([0, *itertools.accumulate(active)], keep)
        w_t = _double_gate(w_t, 4, 2)
        b_t = _double_gate(b_t, 4, 2)
        w_buf, w_x, w_hh = w_t[:, :d].t(), w_t[:, d : 3 * d].t(), w_t[:, 3 * d :].t()
        # The buffer top is always a leaf: its share of the gates and the bias, for every leaf in one
        # matmul; row 0 (an empty buffer) holds the bias alone.
        buffer_gates = leaves.new_empty(1 + batch * n_words, 4 * dt)
        buffer_gates[0] = b_t
        torch.addmm(b_t, leaves[:, :d], w_buf, out=buffer_gates[1:])
        xt = leaves.new_empty(tracks.rows * 2, d)  # h of stack top and second
        h_prev = leaves.new_empty(tracks.rows, dt)
        act_t = leaves.new_empty(tracks.rows, 4 * dt)
        tanh_ct = leaves.new_empty(tracks.rows, dt)
        h_t = leaves.new_zeros(n_steps + 1, batch, dt)  # the state after each step, 0 when done
        c_t = leaves.new_zeros(n_steps + 1, batch, dt)
    for t in range(n_steps):
        if tracked:
            k = active[t]
            lo, hi = tracks.span(t)
            xs, hp, z = xt[2 * lo : 2 * hi], h_prev[lo:hi], act_t[lo:hi]
            torch.index_select(h_store, 0, schedule.tracker_stack[t, : 2 * k], out=xs)
            hp.copy_(h_t[t, :k])
            torch.index_select(buffer_gates, 0, schedule.tracker_buffer[t, :k], out=z)
            z.addmm_(xs.view(k, 2 * d), w_x).addmm_(hp, w_hh)
            i, f, g, o = _split(z, 4)
            z.sigmoid_()
            g.mul_(two).sub_(one)  # tanh
            c = c_t[t + 1, :k]
            torch.mul(i, g, out=c).addcmul_(f, c_t[t, :k])
            torch.mul(o, _tanh(c, tanh_ct[lo:hi], two, one), out=h_t[t + 1, :k])
        lo, hi = offsets[t], offsets[t + 1]
        if hi == lo:
            continue
        m = hi - lo
        children = pairs[2 * lo : 2 * hi]
        a, b = reduces.span(t)
        xs, z = x[a:b], act[a:b]
        torch.index_select(h_store, 0, children, out=xs.view(2 * m, d))
        torch.addmm(b_r, xs, w_c, out=z)
        if tracked:
            torch.index_select(h_t[t + 1], 0, schedule.step_batch[lo:hi], out=e[a:b])
            z.addmm_(e[a:b], w_e)
        i, f_left, f_right, o, g = _split(z, 5)
        z.sigmoid_()
        g.mul_(two).sub_(one)  # tanh
        cc = c_store.index_select(0, children).view(m, 2, d)
        c = torch.mul(i, g).addcmul_(f_left, cc[:, 0]).addcmul_(f_right, cc[:, 1])
        tc = _tanh(c, tanh_c[a:b], two, one)
        c_store.index_copy_(0, out[lo:hi], c)
        h_store.index_copy_(0, out[lo:hi], torch.mul(o, tc, out=c))
    root_h = h_store.index_select(0, schedule.root)
    saved = [c_store, x, e, act, tanh_c] if keep else []
    if not tracked:
        return root_h, leaves.new_zeros(0), saved
    if keep:
        saved += [leaves[:, :d], xt, h_prev, act_t, c_t, tanh_ct]
    rank = torch.empty_like(schedule.tracker_order)
    rank[schedule.tracker_order] = torch.arange(batch, device=rank.device)
    return root_h, h_t[1:].index_select(1, rank), saved


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, leaves, w_r, b_r, w_t, b_t, schedule: Schedule):
        root_h, tracker_h, saved = _forward(leaves, w_r, b_r, w_t, b_t, schedule, keep=True)
        ctx.schedule = schedule
        ctx.dims = (w_r.shape[0] // 5, 0 if w_t is None else w_t.shape[0] // 4)
        ctx.save_for_backward(w_r, w_t, *saved)
        return root_h, tracker_h

    @staticmethod
    def backward(ctx, g_root, g_tracker):
        d, dt = ctx.dims
        schedule = ctx.schedule
        batch, n_words = schedule.batch_size, schedule.n_words
        tracked = dt > 0
        w_r, w_t, c_store, x, e, act, tanh_c, *rest = ctx.saved_tensors
        if tracked:
            leaf_h, xt, h_prev, act_t, c_t, tanh_ct = rest
            pairs, out, offsets = schedule.step_children, schedule.step_out, schedule.step_offsets
            active = schedule.tracker_active
            t_off = [0, *itertools.accumulate(active)]
        else:
            pairs, out, offsets = schedule.level_children, schedule.level_out, schedule.level_offsets
        n_steps = len(offsets) - 1
        g_h = c_store.new_zeros(c_store.shape)  # (R, D) gradient of each node's h
        g_c = c_store.new_zeros(c_store.shape)
        g_h.index_copy_(0, schedule.root, g_root.to(g_h.dtype))
        # The gradient of every REDUCE's gate pre-activations: the activations' derivatives, times (step
        # by step) the gradient of the activations, gathered in one step's scratch rows u.
        dz = _activation_grads(act, 5, 4)
        u = act.new_empty(_StepRows(offsets, keep=False).rows, 5 * d)
        w_c, w_e = w_r[:, : 2 * d], w_r[:, 2 * d :]
        if tracked:
            w_buf, w_x, w_hh = w_t[:, :d], w_t[:, d : 3 * d], w_t[:, 3 * d :]
            g_buffer_gates = c_store.new_zeros(1 + batch * n_words, 4 * dt)
            # Gradients of the Tracker's h after each step, in tracker_order; rows past a sentence's
            # last step are outputs fixed at 0, so their gradient stops there.
            g_ht = g_tracker.index_select(1, schedule.tracker_order).to(c_store.dtype)
            g_ht = torch.cat((g_ht.new_zeros(1, batch, dt), g_ht))
            g_ct = c_store.new_zeros(batch, dt)
            dz_t = _activation_grads(act_t, 4, 2)
            u_t = act_t.new_empty(batch, 4 * dt)
        d_tanh_c = 1 - tanh_c * tanh_c
        if tracked:
            d_tanh_ct = 1 - tanh_ct * tanh_ct
        for t in reversed(range(n_steps)):
            lo, hi = offsets[t], offsets[t + 1]
            if hi > lo:
                m = hi - lo
                rows = out[lo:hi]
                children = pairs[2 * lo : 2 * hi]
                gh = _gather(g_h, rows)
                gc = _gather(g_c, rows)
                a, z = act[lo:hi], dz[lo:hi]
                i, _, _, o, g = _split(a, 5)
                um = u[:m]
                ui, _, _, uo, ug = _split(um, 5)
                torch.mul(gh, tanh_c[lo:hi], out=uo)
                gc.addcmul_(gh * o, d_tanh_c[lo:hi])
                # Both forget gates at once: the children's c, (M, 2, D).
                cc = _gather(c_store, children).view(m, 2, d)
                torch.mul(gc[:, None], cc, out=um[:, d : 3 * d].view(m, 2, d))
                torch.mul(gc, g, out=ui)
                torch.mul(gc, i, out=ug)
                z.mul_(um)
                # Each node has one parent, so its c gradient is written, not added; its h gradient
                # already holds what later Tracker steps read.
                g_c.index_copy_(0, children, (gc[:, None] * a[:, d : 3 * d].view(m, 2, d)).view(2 * m, d))
                g_h.index_add_(0, children, (z @ w_c).view(2 * m, d))
                if tracked:
                    g_ht[t + 1].index_add_(0, schedule.step_batch[lo:hi], z @ w_e)
            if tracked:
                k, lo_t, hi_t = active[t], t_off[t], t_off[t + 1]
                a, z = act_t[lo_t:hi_t], dz_t[lo_t:hi_t]
                i, f, g, o = _split(a, 4)
                uk = u_t[:k]
                ui, uf, ug, uo = _split(uk, 4)
                gh, gc = g_ht[t + 1, :k], g_ct[:k]
                torch.mul(gh, tanh_ct[lo_t:hi_t], out=uo)
                gc.addcmul_(gh * o, d_tanh_ct[lo_t:hi_t])
                torch.mul(gc, c_t[t, :k], out=uf)
                torch.mul(gc, g, out=ui)
                torch.mul(gc, i, out=ug)
                z.mul_(uk)
                gc.mul_(f)
                # Row 0 (the empty slot) repeats; its gradient is never used.
                g_h.index_add_(0, schedule.tracker_stack[t, : 2 * k], (z @ w_x).view(2 * k, d))
                g_ht[t, :k].addmm_(z, w_hh)
        g_w_r = torch.cat((dz.t() @ x, dz.t() @ e), dim=1)
        g_b_r = dz.sum(0)
        g_w_t = g_b_t = None
        leaves = slice(1, 1 + batch * n_words)
        if tracked:
            # The buffer tops read at every step; row 0 (an empty buffer) repeats and is never used.
            ids = torch.cat([schedule.tracker_buffer[t, :k] for t, k in enumerate(active)])
            g_buffer_gates.index_add_(0, ids, dz_t)
            g_h[leaves].addmm_(g_buffer_gates[leaves], w_buf)
            g_w_t = torch.cat(
                (
                    g_buffer_gates[leaves].t() @ leaf_h,
                    dz_t.t() @ xt.view(-1, 2 * d),
                    dz_t.t() @ h_prev,
                ),
                dim=1,
            )
            g_b_t = dz_t.sum(0)
        g_leaves = torch.cat((g_h[leaves], g_c[leaves]), dim=1)
        return g_leaves, g_w_r, g_b_r, g_w_t, g_b_t, None
