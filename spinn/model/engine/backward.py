"""The engine's hand-written backward (see `spinn.model.engine`): the steps in reverse, with gradient
stores of the forward's layout, and the weight gradients at the end in one matmul over all steps.

As in the forward, every view a step uses is made before the loop and handed to it as a named record
(`ReduceGrad`, `TrackerGrad`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from spinn.model.cells import (
    ReduceGates,
    TrackerGates,
    activation_grads,
    forget_pair,
    one_minus_square,
    reduce_blocks,
    tracker_blocks,
)
from spinn.model.engine.forward import ReduceIds, Saved, reduce_ids
from spinn.model.engine.memory import Pool, StepRows, TrackerRows, scratch, workspace
from spinn.schedule import Schedule


class ReduceGrad(NamedTuple):
    """One step's REDUCEs in the backward: the forward's rows, and the scratch rows of their gradients."""

    ids: ReduceIds
    dz: Tensor  # (M, 5 D) the activations' derivatives, then the pre-activations' gradient
    act: ReduceGates  # the gate activations
    forget: Tensor  # (M, 2, D) both forget gates' activations
    tanh_c: Tensor  # (M, D)
    d_tanh_c: Tensor  # (M, D) 1 - tanh(c)^2
    u: Tensor  # (M, 5 D) the activations' gradient
    u_gates: ReduceGates
    u_forget: Tensor  # (M, 2, D)
    g_h: Tensor  # (M, D) the results' h gradient
    g_c: Tensor  # (M, D) the results' c gradient
    g_c_pair: Tensor  # (M, 1, D) a view of g_c
    children_c_rows: Tensor  # (2 M, D) the children's c, then their gradient
    children_c: Tensor  # (M, 2, D) a view of it
    g_children: Tensor  # (M, 2 D) the children's h gradient
    g_children_rows: Tensor  # (2 M, D) a view of it


class TrackerGrad(NamedTuple):
    """One Tracker step in the backward."""

    stack_ids: Tensor  # (2 K,)
    dz: Tensor  # (K, 4 d_tracker) the activations' derivatives, then the pre-activations' gradient
    act: TrackerGates
    tanh_c: Tensor  # (K, d_tracker)
    d_tanh_c: Tensor
    c_prev: Tensor  # the state's c before the step
    u: Tensor  # (K, 4 d_tracker) the activations' gradient
    u_gates: TrackerGates
    g_c: Tensor  # (K, d_tracker) the running sentences' c gradient, carried back a step at a time
    g_x: Tensor  # (K, 2 D) the stack inputs' gradient
    g_x_rows: Tensor  # (2 K, D) a view of it
    g_h_prev: Tensor  # (K, d_tracker) the gradient of the state before the step
    g_h: Tensor  # and after it


def _reduce_grads(ids: list[ReduceIds], saved: Saved, ws: dict[str, Tensor], pool: Pool) -> list[ReduceGrad]:
    d = saved.tanh_c.shape[1]
    like = saved.c_store
    sizes = [step.size for step in ids]
    reduces, temp = StepRows(sizes, None), StepRows(sizes, pool)
    u = temp.buffer("u", like, 5 * d)
    g_h, g_c = temp.buffer("g_out_h", like, d), temp.buffer("g_out_c", like, d)
    children_c = temp.buffer("children_c", like, 2, d)
    g_children = temp.buffer("g_children", like, 2 * d)
    columns = (
        ids,
        reduces.views(ws["dz"], "dz"),
        reduces.gates(saved.act, "act", ReduceGates),
        reduces.views(forget_pair(saved.act), "forget"),
        reduces.views(saved.tanh_c, "tanh_c"),
        reduces.views(ws["d_tanh_c"], "d_tanh_c"),
        temp.views(u, "u"),
        temp.gates(u, "u", ReduceGates),
        temp.views(forget_pair(u), "u_forget"),
        temp.views(g_h, "g_out_h"),
        temp.views(g_c, "g_out_c"),
        temp.views(g_c[:, None], "g_out_c_pair"),
        temp.views(children_c.view(-1, d), "children_c_rows", 2),
        temp.views(children_c, "children_c"),
        temp.views(g_children, "g_children"),
        temp.views(g_children.view(-1, d), "g_children_rows", 2),
    )
    return [ReduceGrad._make(row) for row in zip(*columns, strict=True)]


def _tracker_grads(schedule: Schedule, saved: Saved, ws: dict[str, Tensor], pool: Pool) -> list[TrackerGrad]:
    batch, active = schedule.batch_size, schedule.tracker_active
    d, dt = saved.xt.shape[1] // 2, saved.tanh_ct.shape[1]
    like = saved.c_store
    tracks, temp = StepRows(active, None), StepRows(active, pool)
    u = temp.buffer("u_t", like, 4 * dt)
    g_x = temp.buffer("g_xt", like, 2 * d)
    g_c = temp.buffer("g_ct", like, dt)
    g_c.zero_()
    g_rows = TrackerRows(ws["g_ht"], batch, active)
    columns = (
        schedule.tracker_stack.split([2 * k for k in active]),
        tracks.views(ws["dz_t"], "dz_t"),
        tracks.gates(saved.act_t, "act_t", TrackerGates),
        tracks.views(saved.tanh_ct, "tanh_ct"),
        tracks.views(ws["d_tanh_ct"], "d_tanh_ct"),
        TrackerRows(saved.c_t, batch, active).prev,
        temp.views(u, "u_t"),
        temp.gates(u, "u_t", TrackerGates),
        temp.views(g_c, "g_ct"),
        temp.views(g_x, "g_xt"),
        temp.views(g_x.view(-1, d), "g_xt_rows", 2),
        g_rows.prev,
        g_rows.new,
    )
    return [TrackerGrad._make(row) for row in zip(*columns, strict=True)]


def _workspace_tables(saved: Saved, schedule: Schedule, g_root: Tensor | None, g_tracker: Tensor | None):
    """The gradient stores and the activations' derivatives, from the kept workspace."""
    tracked = saved.h_t is not None
    shapes = {
        "g_h": saved.c_store.shape,  # (R, D) gradient of each node's h
        "g_c": saved.c_store.shape,
        "dz": saved.act.shape,
        "d_tanh_c": saved.tanh_c.shape,
    }
    if tracked:
        dt = saved.tanh_ct.shape[1]
        shapes |= {
            "g_ht": saved.h_t.shape,
            "dz_t": saved.act_t.shape,
            "d_tanh_ct": saved.tanh_ct.shape,
            "g_buffer_gates": (1 + len(saved.leaf_h), 4 * dt),
        }
    ws = workspace.take(saved.c_store, shapes)
    ws["g_h"].zero_()
    ws["g_c"].zero_()
    if g_root is not None:
        ws["g_h"].index_copy_(0, schedule.root, g_root.to(ws["g_h"].dtype))
    activation_grads(saved.act, ReduceGates, out=ws["dz"])
    one_minus_square(saved.tanh_c, out=ws["d_tanh_c"])
    if tracked:
        # Gradients of the Tracker's h, packed like its states; rows past a sentence's last step are
        # outputs fixed at 0, so their gradient stops there.
        g_ht, batch = ws["g_ht"], schedule.batch_size
        if g_tracker is None:
            g_ht.zero_()
        else:
            g_ht[:batch] = 0
            torch.index_select(
                g_tracker.reshape(-1, dt).to(g_ht.dtype), 0, schedule.tracker_out, out=g_ht[batch:]
            )
        activation_grads(saved.act_t, TrackerGates, out=ws["dz_t"])
        one_minus_square(saved.tanh_ct, out=ws["d_tanh_ct"])
    return ws


def backward_loop(
    saved: Saved, w_r: Tensor, w_t: Tensor | None, schedule: Schedule, g_root, g_tracker
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """The gradients of the leaves (W, 2 D), the Reduce's weight and bias and the Tracker's (None
    without one) from those of the root h (B, D) and of the Tracker's h (T, B, d_tracker), either None."""
    d, tracked = saved.tanh_c.shape[1], w_t is not None
    dt = saved.tanh_ct.shape[1] if tracked else 0
    ids = reduce_ids(schedule, tracked)
    # One step's rows of the scratch, kept between calls (`Scratch`), as in the forward.
    like = saved.c_store
    pool = scratch.pool(
        ("encode backward", d, dt, like.dtype, like.device),
        max([*(s.size for s in ids), schedule.batch_size]),
    )
    ws = _workspace_tables(saved, schedule, g_root, g_tracker)
    reduce_grads = _reduce_grads(ids, saved, ws, pool)
    tracker_grads = _tracker_grads(schedule, saved, ws, pool) if tracked else [None] * len(reduce_grads)
    w_c, w_e = reduce_blocks(w_r)
    w_x, w_hh = tracker_blocks(w_t, d)[1:] if tracked else (None, None)
    for r, t in zip(reversed(reduce_grads), reversed(tracker_grads), strict=True):
        if r.ids.size:
            _reduce_backward(r, saved.c_store, ws, w_c, w_e if tracked else None)
        if t is not None:
            _tracker_backward(t, ws["g_h"], w_x, w_hh)
    return _weight_grads(saved, schedule, ws, w_t)


def _reduce_backward(
    r: ReduceGrad, c_store: Tensor, ws: dict[str, Tensor], w_c: Tensor, w_e: Tensor | None
) -> None:
    g_h, g_c = ws["g_h"], ws["g_c"]
    torch.index_select(g_h, 0, r.ids.out, out=r.g_h)
    torch.index_select(g_c, 0, r.ids.out, out=r.g_c)
    torch.mul(r.g_h, r.tanh_c, out=r.u_gates.o)
    r.g_c.addcmul_(r.g_h.mul_(r.act.o), r.d_tanh_c)
    # Both forget gates at once: the children's c, (M, 2, D).
    torch.index_select(c_store, 0, r.ids.children, out=r.children_c_rows)
    torch.mul(r.g_c_pair, r.children_c, out=r.u_forget)
    torch.mul(r.g_c, r.act.g, out=r.u_gates.i)
    torch.mul(r.g_c, r.act.i, out=r.u_gates.g)
    r.dz.mul_(r.u)
    # Each node has one parent, so its c gradient is written, not added; its h gradient already holds
    # what later Tracker steps read.
    torch.mm(r.dz, w_c, out=r.g_children)
    g_h.index_add_(0, r.ids.children, r.g_children_rows)
    torch.mul(r.g_c_pair, r.forget, out=r.children_c)
    g_c.index_copy_(0, r.ids.children, r.children_c_rows)
    if w_e is not None:
        ws["g_ht"].index_add_(0, r.ids.tracker_rows, r.dz @ w_e)


def _tracker_backward(t: TrackerGrad, g_h: Tensor, w_x: Tensor, w_hh: Tensor) -> None:
    torch.mul(t.g_h, t.tanh_c, out=t.u_gates.o)
    t.g_c.addcmul_(t.g_h.mul_(t.act.o), t.d_tanh_c)
    torch.mul(t.g_c, t.c_prev, out=t.u_gates.f)
    torch.mul(t.g_c, t.act.g, out=t.u_gates.i)
    torch.mul(t.g_c, t.act.i, out=t.u_gates.g)
    t.dz.mul_(t.u)
    t.g_c.mul_(t.act.f)
    # Row 0 (the empty slot) repeats; its gradient is never used.
    torch.mm(t.dz, w_x, out=t.g_x)
    g_h.index_add_(0, t.stack_ids, t.g_x_rows)
    t.g_h_prev.addmm_(t.dz, w_hh)


def _weight_grads(saved: Saved, schedule: Schedule, ws: dict[str, Tensor], w_t: Tensor | None):
    """The leaves' and the weights' gradients, each weight's in one matmul over all steps."""
    dz = ws["dz"]
    g_w_r = torch.cat((dz.t() @ saved.x, dz.t() @ saved.e), dim=1)
    g_b_r = dz.sum(0)
    g_w_t = g_b_t = None
    g_leaf_h = ws["g_h"].index_select(0, schedule.leaf_ids)
    if w_t is not None:
        dz_t, w_buf = ws["dz_t"], tracker_blocks(w_t, saved.tanh_c.shape[1])[0]
        # The buffer tops read at every step; row 0 (an empty buffer) repeats and is never used.
        g_buffer_gates = ws["g_buffer_gates"].zero_()
        g_buffer_gates.index_add_(0, schedule.tracker_buffer, dz_t)
        g_leaf_h.addmm_(g_buffer_gates[1:], w_buf)
        g_w_t = torch.cat(
            (
                g_buffer_gates[1:].t() @ saved.leaf_h,
                dz_t.t() @ saved.xt,
                dz_t.t() @ saved.h_t.index_select(0, schedule.tracker_prev),
            ),
            dim=1,
        )
        g_b_t = dz_t.sum(0)
    g_leaves = torch.cat((g_leaf_h, ws["g_c"].index_select(0, schedule.leaf_ids)), dim=1)
    return g_leaves, g_w_r, g_b_r, g_w_t, g_b_t
