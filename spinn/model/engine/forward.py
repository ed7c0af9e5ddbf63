"""The engine's forward loop over a precomputed `Schedule` (see `spinn.model.engine`).

Every view a step uses is made before the loop and handed to it as a named record (`ReduceStep`,
`TrackerStep`): the loop body is the kernels and nothing else.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from spinn.model.cells import Kernels, ReduceGates, TrackerGates
from spinn.model.engine.memory import Pool, StepRows, TrackerRows, batch_tables, scratch
from spinn.schedule import Schedule


class ReduceIds(NamedTuple):
    """The REDUCEs of one step (with a Tracker) or one tree level (without)."""

    size: int  # M
    children: Tensor  # (2 M,) the (left, right) children's ids
    out: Tensor  # (M,) the rows the results go to
    tracker_rows: Tensor | None  # (M,) the packed Tracker rows they read; None without a Tracker


def reduce_ids(schedule: Schedule, tracked: bool) -> list[ReduceIds]:
    """The REDUCEs of each step (with a Tracker) or tree level (without, SPINN-PI-NT)."""
    if tracked:
        pairs, out, offsets = schedule.step_children, schedule.step_out, schedule.step_offsets
    else:
        pairs, out, offsets = schedule.level_children, schedule.level_out, schedule.level_offsets
    sizes = [b - a for a, b in itertools.pairwise(offsets)]
    tracker_rows = schedule.step_tracker.split(sizes) if tracked else [None] * len(sizes)
    columns = (sizes, pairs.split([2 * m for m in sizes]), out.split(sizes), tracker_rows)
    return [ReduceIds._make(row) for row in zip(*columns, strict=True)]


class ReduceStep(NamedTuple):
    """One step's REDUCEs and the rows of the buffers they use."""

    ids: ReduceIds
    children_h: Tensor  # (2 M, D): the children's h, gathered; a view of x
    x: Tensor  # (M, 2 D) [h_left; h_right]
    tracking: Tensor  # (M, d_tracker) the Tracker's h they read
    z: Tensor  # (M, 5 D) the gates' pre-activations, then their activations
    gates: ReduceGates  # z's gate blocks
    tanh_c: Tensor  # (M, D)
    children_c: Tensor  # (2 M, D) the children's c, gathered
    c_left: Tensor  # (M, D) views of children_c
    c_right: Tensor
    h: Tensor  # (M, D) the results
    c: Tensor


class TrackerStep(NamedTuple):
    """One Tracker step on the K sentences still running, and the rows it uses."""

    stack_ids: Tensor  # (2 K,) the ids of the stack top and the item below it
    buffer_rows: Tensor  # (K,) the buffer tops' rows of the buffer gates
    stack_h: Tensor  # (2 K, D) their h, gathered; a view of x
    x: Tensor  # (K, 2 D)
    z: Tensor  # (K, 4 d_tracker) the gates' pre-activations, then their activations
    gates: TrackerGates
    tanh_c: Tensor  # (K, d_tracker)
    h_prev: Tensor  # (K, d_tracker) the state before the step (a prefix of the last step's rows)
    c_prev: Tensor
    h_new: Tensor  # (K, d_tracker) the state after it
    c_new: Tensor


class Saved(NamedTuple):
    """What the backward reads of a training forward (the Tracker's fields None without one)."""

    c_store: Tensor  # (R, D) every node's c
    x: Tensor  # (sum M, 2 D) every REDUCE's [h_left; h_right]
    e: Tensor  # (sum M, d_tracker) the Tracker's h every REDUCE read
    act: Tensor  # (sum M, 5 D) every REDUCE's gate activations
    tanh_c: Tensor  # (sum M, D)
    leaf_h: Tensor | None = None  # (W, D)
    xt: Tensor | None = None  # (P, 2 D) the Tracker's stack inputs, packed
    act_t: Tensor | None = None  # (P, 4 d_tracker)
    h_t: Tensor | None = None  # (B + P, d_tracker) its packed states (`TrackerRows`)
    c_t: Tensor | None = None
    tanh_ct: Tensor | None = None  # (P, d_tracker)


def _reduce_steps(ids: list[ReduceIds], d: int, dt: int, leaves: Tensor, pool: Pool, keep: bool):
    """The REDUCE steps' records, and their buffers that the backward reads (fresh with ``keep``, else
    the pool's), by their names in `Saved`."""
    sizes = [step.size for step in ids]
    reduces, temp = StepRows(sizes, None if keep else pool), StepRows(sizes, pool)
    x = reduces.buffer("x", leaves, 2 * d)
    e = reduces.buffer("e", leaves, dt)
    act = reduces.buffer("act", leaves, 5 * d)
    tanh_c = reduces.buffer("tanh_c", leaves, d)
    children_c = temp.buffer("children_c", leaves, 2, d)
    h, c = temp.buffer("new_h", leaves, d), temp.buffer("new_c", leaves, d)
    columns = (
        ids,
        reduces.views(x.view(-1, d), "x_rows", 2),
        reduces.views(x, "x"),
        reduces.views(e, "e"),
        reduces.views(act, "act"),
        reduces.gates(act, "act", ReduceGates),
        reduces.views(tanh_c, "tanh_c"),
        temp.views(children_c.view(-1, d), "children_c_rows", 2),
        temp.views(children_c[:, 0], "c_left"),
        temp.views(children_c[:, 1], "c_right"),
        temp.views(h, "new_h"),
        temp.views(c, "new_c"),
    )
    kept = {"x": x, "e": e, "act": act, "tanh_c": tanh_c}
    return [ReduceStep._make(row) for row in zip(*columns, strict=True)], kept


def _tracker_steps(schedule: Schedule, d: int, dt: int, leaves: Tensor, tables, pool: Pool, keep: bool):
    """The Tracker steps' records (the running sentences' rows, packed: step t holds the first
    ``tracker_active[t]`` sentences, longest first), and what the backward reads of them, by their
    names in `Saved`."""
    batch, active = schedule.batch_size, schedule.tracker_active
    tracks = StepRows(active, None if keep else pool)
    xt = tracks.buffer("xt", leaves, 2 * d)
    act_t = tracks.buffer("act_t", leaves, 4 * dt)
    tanh_ct = tracks.buffer("tanh_ct", leaves, dt)
    h_t, c_t = tables["h_t"], tables["c_t"]
    h_t[:batch] = 0
    c_t[:batch] = 0
    h_rows, c_rows = TrackerRows(h_t, batch, active), TrackerRows(c_t, batch, active)
    columns = (
        schedule.tracker_stack.split([2 * k for k in active]),
        schedule.tracker_buffer.split(active),
        tracks.views(xt.view(-1, d), "xt_rows", 2),
        tracks.views(xt, "xt"),
        tracks.views(act_t, "act_t"),
        tracks.gates(act_t, "act_t", TrackerGates),
        tracks.views(tanh_ct, "tanh_ct"),
        h_rows.prev,
        c_rows.prev,
        h_rows.new,
        c_rows.new,
    )
    kept = {"leaf_h": leaves[:, :d], "xt": xt, "act_t": act_t, "h_t": h_t, "c_t": c_t, "tanh_ct": tanh_ct}
    return [TrackerStep._make(row) for row in zip(*columns, strict=True)], kept


def forward_loop(
    leaves: Tensor,
    kernels: Kernels,
    schedule: Schedule,
    keep: bool,
    tracker_states: bool,
) -> tuple[Tensor, Tensor, Saved | None]:
    """The loop. Returns the root h (B, D), the Tracker's h (T, B, d_tracker) in batch order (empty
    without a Tracker or ``tracker_states``) and, with ``keep``, what the backward reads."""
    d, dt, batch = leaves.shape[1] // 2, kernels.d_tracker, schedule.batch_size
    tracked = kernels.tracked
    leaves = leaves.detach()
    active = schedule.tracker_active if tracked else []
    states = (batch + sum(active), dt)  # the Tracker's packed h and c (`TrackerRows`); no columns without
    tables = batch_tables(kernels, leaves, schedule.leaf_ids, schedule.n_rows, keep, h_t=states, c_t=states)
    h_store, c_store = tables["h_store"], tables["c_store"]
    # One step's rows of the scratch buffers (all of them without ``keep``), kept between calls.
    ids = reduce_ids(schedule, tracked)
    pool = scratch.pool(
        ("encode", d, dt, leaves.dtype, leaves.device), max([*(s.size for s in ids), *active, 1])
    )
    reduce_steps, kept = _reduce_steps(ids, d, dt, leaves, pool, keep)
    tracker_steps = [None] * len(reduce_steps)
    if tracked:
        tracker_steps, tracker_kept = _tracker_steps(schedule, d, dt, leaves, tables, pool, keep)
        kept |= tracker_kept
    for r, t in zip(reduce_steps, tracker_steps, strict=True):
        if t is not None:
            _track(t, kernels, h_store, tables["buffer_gates"])
        if r.ids.size:
            _reduce(r, kernels, h_store, c_store, tables["h_t"] if tracked else None)
    root_h = h_store.index_select(0, schedule.root)
    saved = Saved(c_store=c_store, **kept) if keep else None
    if not (tracked and tracker_states):
        return root_h, leaves.new_zeros(0), saved
    h_t = tables["h_t"]
    tracker_h = h_t.new_zeros(len(active) * batch, dt).index_copy_(0, schedule.tracker_out, h_t[batch:])
    return root_h, tracker_h.view(len(active), batch, dt), saved


def _track(t: TrackerStep, kernels: Kernels, h_store: Tensor, buffer_gates: Tensor) -> None:
    """One Tracker step: gather its inputs, run the cell into the packed state's rows."""
    torch.index_select(h_store, 0, t.stack_ids, out=t.stack_h)
    torch.index_select(buffer_gates, 0, t.buffer_rows, out=t.z)
    t.z.addmm_(t.x, kernels.tracker_stack).addmm_(t.h_prev, kernels.tracker_hidden)
    kernels.tracker(t.z, t.gates, t.c_prev, t.c_new, t.h_new, t.tanh_c)


def _reduce(r: ReduceStep, kernels: Kernels, h_store: Tensor, c_store: Tensor, h_t: Tensor | None) -> None:
    """One step's REDUCEs: gather the children, compose, write the results' rows."""
    torch.index_select(h_store, 0, r.ids.children, out=r.children_h)
    torch.addmm(kernels.reduce_bias, r.x, kernels.reduce_children, out=r.z)
    if h_t is not None:
        torch.index_select(h_t, 0, r.ids.tracker_rows, out=r.tracking)
        r.z.addmm_(r.tracking, kernels.reduce_tracker)
    torch.index_select(c_store, 0, r.ids.children, out=r.children_c)
    kernels.reduce(r.z, r.gates, r.c_left, r.c_right, r.c, r.h, r.tanh_c)
    c_store.index_copy_(0, r.ids.out, r.c)
    h_store.index_copy_(0, r.ids.out, r.h)
