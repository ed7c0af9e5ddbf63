"""The encoder's loop over a precomputed `Schedule`: one autograd Function with a hand-written backward.

With given transitions every node id is known before the forward pass starts (`build_schedule`), so the
whole loop -- Tracker steps and REDUCEs -- is one `torch.autograd.Function`:

* the node states live in two stores ``h_store`` and ``c_store`` (R, D) written once per row, in
  place, outside autograd; rows are never overwritten, so the backward reads every child's c back;
* the forward keeps what the backward needs in buffers allocated once per batch: the gathered inputs
  of every matmul and the gate activations;
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
        root_h, tracker_h = _Encode.apply(leaves, *weights, schedule)
    return root_h, (tracker_h if tracker_weight is not None else None)


def _split(x: Tensor, n: int) -> tuple[Tensor, ...]:
    return x.split(x.shape[-1] // n, dim=-1)


def _tanh_(x: Tensor) -> Tensor:
    """tanh in place as 2 sigmoid(2 x) - 1: torch's CPU tanh kernel is several times slower than its
    sigmoid, and the two agree to float32 rounding."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def _gather(store: Tensor, ids: Tensor) -> Tensor:
    """store[ids] along dim 0; F.embedding is torch's fastest row gather on the CPU."""
    return F.embedding(ids, store)


def _dsigmoid(a: Tensor) -> Tensor:
    """The derivative of the sigmoid from its value a."""
    return a * (1 - a)


def _dtanh(a: Tensor) -> Tensor:
    """The derivative of tanh from its value a."""
    return 1 - a * a


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, leaves, w_r, b_r, w_t, b_t, schedule: Schedule):
        d = w_r.shape[0] // 5
        batch, n_words = schedule.batch_size, schedule.n_words
        tracked = w_t is not None
        dt = w_t.shape[0] // 4 if tracked else 0
        if tracked:
            pairs, out, offsets = schedule.step_children, schedule.step_out, schedule.step_offsets
        else:
            pairs, out, offsets = schedule.level_children, schedule.level_out, schedule.level_offsets
        n_steps, n_nodes = len(offsets) - 1, offsets[-1]
        leaves = leaves.detach()
        h_store = leaves.new_zeros(schedule.n_rows, d)  # (R, D)
        c_store = leaves.new_zeros(schedule.n_rows, d)
        h_store[1 : 1 + batch * n_words] = leaves[:, :d]
        c_store[1 : 1 + batch * n_words] = leaves[:, d:]
        x = leaves.new_empty(n_nodes, 2 * d)  # [h_left; h_right] of every REDUCE
        e = leaves.new_empty(n_nodes, dt)  # the Tracker's h each REDUCE reads
        act = leaves.new_empty(n_nodes, 5 * d)  # gate activations
        tanh_c = leaves.new_empty(n_nodes, d)
        if tracked:
            # The Tracker's rows, packed: step t holds the first active[t] sentences (longest first).
            active = schedule.tracker_active
            t_off = [0, *itertools.accumulate(active)]
            w_buf, w_x, w_hh = w_t[:, :d].t(), w_t[:, d : 3 * d].t(), w_t[:, 3 * d :].t()
            # The buffer top is always a leaf: its share of the gates, for every leaf in one matmul.
            buffer_gates = leaves.new_zeros(1 + batch * n_words, 4 * dt)
            torch.mm(leaves[:, :d], w_buf, out=buffer_gates[1:])
            xt = leaves.new_empty(t_off[-1] * 2, d)  # h of stack top and second
            h_prev = leaves.new_empty(t_off[-1], dt)
            act_t = leaves.new_empty(t_off[-1], 4 * dt)
            tanh_ct = leaves.new_empty(t_off[-1], dt)
            h_t = leaves.new_zeros(n_steps + 1, batch, dt)  # the state after each step, 0 when done
            c_t = leaves.new_zeros(n_steps + 1, batch, dt)
        w_c, w_e = w_r[:, : 2 * d].t(), w_r[:, 2 * d :].t()
        for t in range(n_steps):
            if tracked:
                k, lo_t, hi_t = active[t], t_off[t], t_off[t + 1]
                xt[2 * lo_t : 2 * hi_t] = _gather(h_store, schedule.tracker_stack[t, : 2 * k])
                h_prev[lo_t:hi_t] = h_t[t, :k]
                z = act_t[lo_t:hi_t]
                torch.add(_gather(buffer_gates, schedule.tracker_buffer[t, :k]), b_t, out=z)
                z.addmm_(xt[2 * lo_t : 2 * hi_t].view(k, 2 * d), w_x)
                z.addmm_(h_prev[lo_t:hi_t], w_hh)
                i, f, g, o = _split(z, 4)
                g.mul_(2)
                z.sigmoid_()
                g.mul_(2).sub_(1)  # tanh
                torch.addcmul(i * g, f, c_t[t, :k], out=c_t[t + 1, :k])
                _tanh_(tanh_ct[lo_t:hi_t].copy_(c_t[t + 1, :k]))
                torch.mul(o, tanh_ct[lo_t:hi_t], out=h_t[t + 1, :k])
            lo, hi = offsets[t], offsets[t + 1]
            if hi == lo:
                continue
            m = hi - lo
            x[lo:hi].view(2 * m, d).copy_(_gather(h_store, pairs[2 * lo : 2 * hi]))
            z = act[lo:hi]
            torch.addmm(b_r, x[lo:hi], w_c, out=z)
            if tracked:
                e[lo:hi] = _gather(h_t[t + 1], schedule.step_batch[lo:hi])
                z.addmm_(e[lo:hi], w_e)
            i, f_left, f_right, o, g = _split(z, 5)
            g.mul_(2)
            z.sigmoid_()
            g.mul_(2).sub_(1)  # tanh
            cc = _gather(c_store, pairs[2 * lo : 2 * hi]).view(m, 2, d)
            c = i * g
            c.addcmul_(f_left, cc[:, 0]).addcmul_(f_right, cc[:, 1])
            _tanh_(tanh_c[lo:hi].copy_(c))
            c_store.index_copy_(0, out[lo:hi], c)
            h_store.index_copy_(0, out[lo:hi], o * tanh_c[lo:hi])
        ctx.schedule = schedule
        ctx.dims = (d, dt, batch, n_words)
        saved = [w_r, c_store, x, e, act, tanh_c]
        if tracked:
            saved += [w_t, leaves[:, :d], xt, h_prev, act_t, c_t, tanh_ct]
        ctx.save_for_backward(*saved)
        root_h = h_store.index_select(0, schedule.root)
        if not tracked:
            return root_h, leaves.new_zeros(0)
        rank = torch.empty_like(schedule.tracker_order)
        rank[schedule.tracker_order] = torch.arange(batch, device=rank.device)
        return root_h, h_t[1:].index_select(1, rank)

    @staticmethod
    def backward(ctx, g_root, g_tracker):
        d, dt, batch, n_words = ctx.dims
        schedule = ctx.schedule
        tracked = dt > 0
        w_r, c_store, x, e, act, tanh_c, *rest = ctx.saved_tensors
        if tracked:
            w_t, leaf_h, xt, h_prev, act_t, c_t, tanh_ct = rest
            pairs, out, offsets = schedule.step_children, schedule.step_out, schedule.step_offsets
            active = schedule.tracker_active
            t_off = [0, *itertools.accumulate(active)]
        else:
            pairs, out, offsets = schedule.level_children, schedule.level_out, schedule.level_offsets
        n_steps = len(offsets) - 1
        g_h = c_store.new_zeros(c_store.shape)  # (R, D) gradient of each node's h
        g_c = c_store.new_zeros(c_store.shape)
        g_h.index_copy_(0, schedule.root, g_root.to(g_h.dtype))
        dz = torch.empty_like(act)  # gradient of every REDUCE's gate pre-activations
        w_c, w_e = w_r[:, : 2 * d], w_r[:, 2 * d :]
        if tracked:
            w_buf, w_x, w_hh = w_t[:, :d], w_t[:, d : 3 * d], w_t[:, 3 * d :]
            g_buffer_gates = c_store.new_zeros(1 + batch * n_words, 4 * dt)
            # Gradients of the Tracker's h after each step, in tracker_order; rows past a sentence's
            # last step are outputs fixed at 0, so their gradient stops there.
            g_ht = g_tracker.index_select(1, schedule.tracker_order).to(c_store.dtype)
            g_ht = torch.cat((g_ht.new_zeros(1, batch, dt), g_ht))
            g_ct = c_store.new_zeros(batch, dt)
            dz_t = torch.empty_like(act_t)
        for t in reversed(range(n_steps)):
            lo, hi = offsets[t], offsets[t + 1]
            if hi > lo:
                m = hi - lo
                rows = out[lo:hi]
                children = pairs[2 * lo : 2 * hi]
                gh = _gather(g_h, rows)
                gc = _gather(g_c, rows)
                i, f_left, f_right, o, g = _split(act[lo:hi], 5)
                tc = tanh_c[lo:hi]
                dzi, dzl, dzr, dzo, dzg = _split(dz[lo:hi], 5)
                torch.mul(gh * tc, _dsigmoid(o), out=dzo)
                gc.addcmul_(gh * o, _dtanh(tc))
                cc = _gather(c_store, children).view(m, 2, d)
                torch.mul(gc * cc[:, 0], _dsigmoid(f_left), out=dzl)
                torch.mul(gc * cc[:, 1], _dsigmoid(f_right), out=dzr)
                torch.mul(gc * g, _dsigmoid(i), out=dzi)
                torch.mul(gc * i, _dtanh(g), out=dzg)
                # Each node has one parent, so its c gradient is written, not added; its h gradient
                # already holds what later Tracker steps read.
                g_c.index_copy_(0, children, torch.stack((gc * f_left, gc * f_right), 1).view(2 * m, d))
                dx = (dz[lo:hi] @ w_c).view(2 * m, d)
                g_h.index_copy_(0, children, dx.add_(_gather(g_h, children)))
                if tracked:
                    g_ht[t + 1].index_add_(0, schedule.step_batch[lo:hi], dz[lo:hi] @ w_e)
            if tracked:
                k, lo_t, hi_t = active[t], t_off[t], t_off[t + 1]
                i, f, g, o = _split(act_t[lo_t:hi_t], 4)
                dzi, dzf, dzg, dzo = _split(dz_t[lo_t:hi_t], 4)
                gh, gc, tc = g_ht[t + 1, :k], g_ct[:k], tanh_ct[lo_t:hi_t]
                torch.mul(gh * tc, _dsigmoid(o), out=dzo)
                gc.addcmul_(gh * o, _dtanh(tc))
                torch.mul(gc * c_t[t, :k], _dsigmoid(f), out=dzf)
                torch.mul(gc * g, _dsigmoid(i), out=dzi)
                torch.mul(gc * i, _dtanh(g), out=dzg)
                gc.mul_(f)
                # Row 0 (the empty slot) repeats; its gradient is never used, so the last write wins.
                ids = schedule.tracker_buffer[t, :k]
                g_buffer_gates.index_copy_(0, ids, _gather(g_buffer_gates, ids).add_(dz_t[lo_t:hi_t]))
                ids = schedule.tracker_stack[t, : 2 * k]
                dxt = (dz_t[lo_t:hi_t] @ w_x).view(2 * k, d)
                g_h.index_copy_(0, ids, dxt.add_(_gather(g_h, ids)))
                g_ht[t, :k].addmm_(dz_t[lo_t:hi_t], w_hh)
        g_w_r = torch.cat((dz.t() @ x, dz.t() @ e), dim=1)
        g_b_r = dz.sum(0)
        g_w_t = g_b_t = None
        leaves = slice(1, 1 + batch * n_words)
        if tracked:
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
