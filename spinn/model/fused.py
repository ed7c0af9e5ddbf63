"""The encoder's loop over a precomputed `Schedule`: one autograd Function with a hand-written backward.

With given transitions every node id is known before the forward pass starts (`build_schedule`), so the
whole loop -- Tracker steps and REDUCEs -- is one `torch.autograd.Function`:

* the node states live in two stores ``h_store`` and ``c_store`` (R, D) written once per row, in
  place, outside autograd; rows are never overwritten, so the backward reads every child's c back;
  only real words are projected to leaves (``schedule.leaf_rows``), padding never is;
* the forward keeps what the backward needs in buffers allocated once per batch: the gathered inputs
  of every matmul and the gate activations; when no gradient is needed (evaluation) it runs outside
  autograd, reuses one step's rows of those buffers at every step instead, and takes the batch's
  tables (node stores, the Tracker's states, the buffer tops' gates) from memory kept between calls
  on the CPU (`_Workspace`);
* every view the loop uses -- a step's rows of a buffer, its gates, its ids -- is made before the loop
  in bulk (`_StepRows`), and the Tracker's states are packed so that a step's previous state is a
  prefix of the last step's rows (`_TrackerRows`): the loop body is the kernels and nothing else;
* the candidate gate's tanh(z) is computed as 2 sigmoid(2 z) - 1, the factor 2 folded into its
  weights, so one sigmoid covers all gates; tanh(c) too for float32 on the CPU, whose tanh kernel is
  several times slower than its sigmoid (`Kernels.tanh`);
* the backward walks the steps in reverse with gradient stores of the same layout, taken from memory
  kept between calls on the CPU (`_Workspace`), and computes the weight gradients at the end with one
  matmul over all steps instead of one per step (the per-step shapes are small, the single one runs
  near the machine's peak);
* the Tracker runs only on the sentences not yet finished: the schedule orders them longest first,
  so those are a prefix of the batch; its input from the buffer top (always a leaf) is computed for
  all leaves in one matmul before the loop.

Per step that is a handful of kernels and no autograd bookkeeping; the Python loop does not touch the
host beyond reading the precomputed offsets, so it is free of device synchronisation.

Gate layouts follow `spinn.model.spinn`: Reduce (i, f_left, f_right, o, g), Tracker (i, f, g, o).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spinn.model.cells import (
    Kernels,
    ReduceGates,
    TrackerGates,
    activation_grads,
    one_minus_square,
    reduce_blocks,
    split_gates,
    tracker_blocks,
)
from spinn.model.schedule import Schedule


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
    """Run SPINN over the given transitions.

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
        if _needs_grad(leaves, *weights):
            root_h, tracker_h = _Encode.apply(leaves, *weights, schedule, tracker_states)
        else:
            root_h, tracker_h, _ = _forward(
                leaves, *weights, schedule, keep=False, tracker_states=tracker_states
            )
    return root_h, (tracker_h if tracker_states else None)


def _needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on any of the tensors: where it does not (evaluation), the step
    loops run outside autograd."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _batch_tables(
    cells: Kernels, leaves: Tensor, leaf_ids: Tensor, n_rows: int, fresh: bool, **shapes: tuple[int, ...]
) -> dict[str, Tensor]:
    """A batch's tables: the node stores "h_store" and "c_store" (n_rows, D) with zeros in row 0 (the
    empty slot) and the leaves' [h; c] in the rows ``leaf_ids`` (the other rows are written before they
    are read; rows of padding never are); with a Tracker, "buffer_gates" (`Kernels.buffer_gates`); and
    the tables of ``shapes``, unwritten. Fresh (``fresh``: the caller keeps them, as the backward
    reads the training forward's), else from the kept workspace (`_Workspace`)."""
    d = leaves.shape[1] // 2
    shapes |= {"h_store": (n_rows, d), "c_store": (n_rows, d)}
    if cells.tracked:
        shapes["buffer_gates"] = (1 + len(leaves), len(cells.tracker_bias))
    tables = _workspace.take(leaves, shapes, fresh=fresh)
    for name, part in (("h_store", leaves[:, :d]), ("c_store", leaves[:, d:])):
        tables[name][0] = 0
        tables[name].index_copy_(0, leaf_ids, part)
    if cells.tracked:
        cells.buffer_gates(leaves[:, :d], out=tables["buffer_gates"])
    return tables


class _Workspace(threading.local):
    """The batch-sized tensors of a loop that copies its results out -- the backward's (gradient stores,
    activation derivatives) and, without a gradient, the forward's (node stores, the Tracker's states,
    the buffer tops' gates) -- carved out of one buffer per thread that is kept between calls; one
    step's rows of their scratch come from `_Scratch`.

    On the CPU a fresh tensor of a few MB is often memory the allocator has just handed back to the
    system, and touching it again costs a page fault per 4 KB (about 3 us each on a virtual machine):
    about 700 faults per batch at d_hidden 100 and batch 32, 2 ms of a 36 ms training step; about
    30,000 per batch, 8% of the time, evaluating SPINN-PI at d_hidden 300 and batch 512 (how many a
    call meets depends on what ran before it). Nothing here outlives the call that takes it, and a
    thread runs one such call at a time. The buffer holds the largest call's tables so far: for
    SPINN-PI, 73 MB after evaluating SNLI dev at batch 128 and d_hidden 300, 311 MB at the sizes of
    configs/small.yaml (batch 1024, d_hidden 256). Other devices have caching allocators, so there
    each call gets fresh tensors.
    """

    def __init__(self) -> None:
        self.buffer: Tensor | None = None

    def take(
        self, like: Tensor, shapes: dict[str, tuple[int, ...]], fresh: bool = False
    ) -> dict[str, Tensor]:
        """Tensors of ``shapes`` (``like``'s dtype and device), views of the kept buffer on the CPU;
        with ``fresh`` (the caller keeps them beyond the call) new ones."""
        if fresh or like.device.type != "cpu":
            return {k: like.new_empty(s) for k, s in shapes.items()}
        # Sizes rounded up to 16 elements (64 bytes in float32) keep every tensor aligned like a fresh one.
        sizes = {k: -(-math.prod(s) // 16) * 16 for k, s in shapes.items()}
        total = sum(sizes.values())
        if self.buffer is None or self.buffer.numel() < total or self.buffer.dtype != like.dtype:
            self.buffer = like.new_empty(total)
        chunks = self.buffer[:total].split(list(sizes.values()))
        return {k: c[: math.prod(s)].view(s) for (k, s), c in zip(shapes.items(), chunks, strict=True)}


_workspace = _Workspace()


class _Pool:
    """One step's rows of a loop's buffers and the views of their first m rows, kept between calls (see
    `_Scratch`): buffers of ``rows`` rows, by name, and views cached by key."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.tensors: dict[str, Tensor] = {}
        self.views: dict[tuple, Any] = {}

    def tensor(self, name: str, like: Tensor, *shape: int) -> Tensor:
        """The (rows, *shape) buffer ``name``, made on first use (with ``like``'s dtype and device)."""
        if name not in self.tensors:
            self.tensors[name] = like.new_empty(self.rows, *shape)
        return self.tensors[name]

    def cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for, the same object after that."""
        if key not in self.views:
            self.views[key] = make()
        return self.views[key]


class _Scratch(threading.local):
    """Pools of one step's rows for the loops that reuse those rows at every step (evaluation, and a
    training forward's scratch), kept between calls per thread with their views.

    A loop reads a step's rows through views of the first m rows of each buffer, one per step size m.
    With the same buffers from one batch to the next the views are the same too, so a batch makes
    none: an evaluation batch at batch 32, d_hidden 100 made about 400 (about 1 us each, 5% of its
    time). A pool grows to the largest step so far (a batch that needs more rows gets a new one, and
    the old one goes). Nothing outlives the call that takes it, and a thread runs one loop at a time.
    """

    def __init__(self) -> None:
        self.pools: dict[tuple, _Pool] = {}

    def pool(self, key: tuple, rows: int) -> _Pool:
        """The pool for ``key`` (the loop and its shapes, dtype and device) with at least ``rows`` rows."""
        pool = self.pools.get(key)
        if pool is None or pool.rows < rows:
            pool = self.pools[key] = _Pool(rows)
        return pool


_scratch = _Scratch()


class _StepRows:
    """Where each step's rows go in the buffers of one pass, as one view per step made before the loop.

    Without a pool (the backward reads them: ``keep``) every step has its own rows, one step after
    another, in fresh buffers; with one (no gradient needed, and scratch) one step's rows of the
    pool's buffers are reused at every step: a small buffer that stays in cache, instead of fresh
    memory the system has to fault in page by page at every batch, and its views last between calls.
    The views are made in bulk (`Tensor.split`, or kept by the pool) because slicing inside the loop
    costs about a microsecond a view, as much as some of the kernels.
    """

    def __init__(self, sizes: list[int], pool: _Pool | None) -> None:
        self.sizes = sizes
        self.pool = pool
        self.keep = pool is None
        self.rows = sum(sizes) if self.keep else max(sizes, default=0)

    def buffer(self, name: str, like: Tensor, *shape: int) -> Tensor:
        """A buffer with room for the steps' rows, each of ``shape``: fresh, or the pool's ``name``."""
        return like.new_empty(self.rows, *shape) if self.keep else self.pool.tensor(name, like, *shape)

    def views(self, buffer: Tensor, name: str, per_item: int = 1) -> list[Tensor]:
        """Each step's rows of ``buffer``, which holds ``per_item`` rows for each of the step's items.
        Without ``keep`` the views are the pool's, under ``name``: within a pool a name stands for one
        view of one of its buffers (``buffer`` is only sliced the first time)."""
        sizes = [per_item * s for s in self.sizes]
        if self.keep:
            return list(buffer.split(sizes))
        return [self.pool.cached((name, s), lambda s=s: buffer[:s]) for s in sizes]

    def gates(self, buffer: Tensor, name: str, layout: type[TrackerGates] | type[ReduceGates]) -> list:
        """Each step's gate blocks of ``buffer`` (rows, gates * width) as ``layout``s, named ``name.k``."""
        blocks = split_gates(buffer, layout)
        steps = zip(*(self.views(g, f"{name}.{k}") for k, g in enumerate(blocks)), strict=True)
        return [layout(*step) for step in steps]


class _TrackerRows:
    """The Tracker's state, packed: rows 0..B-1 are the zero initial state, then each step's rows (the
    first ``tracker_active[t]`` sentences of ``tracker_order``). Step t starts from a prefix of the rows
    step t - 1 wrote, so no step gathers its previous state."""

    def __init__(self, state: Tensor, batch: int, active: list[int]) -> None:
        self.new = list(state[batch:].split(active))
        self.prev = [state[: active[0]], *(s[:k] for s, k in zip(self.new[:-1], active[1:], strict=True))]


def _reduce_ids(
    schedule: Schedule, tracked: bool
) -> tuple[list[int], list[tuple[Tensor, Tensor, Tensor | None]]]:
    """The REDUCEs of each step (with a Tracker) or tree level (without, SPINN-PI-NT): how many, and
    their (left, right) children (2 M,), the rows they write (M,) and the packed Tracker rows they read
    (M,; None without a Tracker)."""
    if tracked:
        pairs, out, offsets = schedule.step_children, schedule.step_out, schedule.step_offsets
    else:
        pairs, out, offsets = schedule.level_children, schedule.level_out, schedule.level_offsets
    sizes = [b - a for a, b in itertools.pairwise(offsets)]
    tracker_rows = schedule.step_tracker.split(sizes) if tracked else [None] * len(sizes)
    return sizes, list(zip(pairs.split([2 * m for m in sizes]), out.split(sizes), tracker_rows, strict=True))


def _forward(leaves, w_r, b_r, w_t, b_t, schedule: Schedule, keep: bool, tracker_states: bool):
    """The loop. Returns the root h (B, D), the Tracker's h (T, B, d_tracker) in batch order (empty
    without a Tracker or ``tracker_states``) and, with ``keep``, what the backward reads (see
    `_Encode.backward`)."""
    d = w_r.shape[0] // 5
    batch = schedule.batch_size
    tracked = w_t is not None
    dt = w_t.shape[0] // 4 if tracked else 0
    sizes, ids = _reduce_ids(schedule, tracked)
    leaves = leaves.detach()
    cells = Kernels(w_r, b_r, w_t, b_t)
    active = schedule.tracker_active if tracked else []
    states = (batch + sum(active), dt)  # the Tracker's packed h and c (`_TrackerRows`); no columns without
    tables = _batch_tables(cells, leaves, schedule.leaf_ids, schedule.n_rows, keep, h_t=states, c_t=states)
    h_store, c_store = tables["h_store"], tables["c_store"]
    # One step's rows of the scratch buffers (all of them without ``keep``), kept between calls.
    pool = _scratch.pool(("encode", d, dt, leaves.dtype, leaves.device), max([*sizes, *active, 1]))
    reduces, scratch = _StepRows(sizes, None if keep else pool), _StepRows(sizes, pool)
    x = reduces.buffer("x", leaves, 2 * d)  # [h_left; h_right] of every REDUCE
    e = reduces.buffer("e", leaves, dt)  # the Tracker's h each REDUCE reads
    act = reduces.buffer("act", leaves, 5 * d)  # gate activations
    tanh_c = reduces.buffer("tanh_c", leaves, d)
    children_c = scratch.buffer("children_c", leaves, 2, d)
    new_h, new_c = scratch.buffer("new_h", leaves, d), scratch.buffer("new_c", leaves, d)
    reduce_steps = zip(
        sizes,
        zip(
            reduces.views(x.view(-1, d), "x_rows", 2),
            reduces.views(x, "x"),
            reduces.views(e, "e"),
            strict=True,
        ),
        zip(
            reduces.views(act, "act"),
            reduces.gates(act, "act", ReduceGates),
            reduces.views(tanh_c, "tanh_c"),
            strict=True,
        ),
        zip(
            scratch.views(children_c.view(-1, d), "children_c_rows", 2),
            scratch.views(children_c[:, 0], "c_left"),
            scratch.views(children_c[:, 1], "c_right"),
            scratch.views(new_h, "new_h"),
            scratch.views(new_c, "new_c"),
            strict=True,
        ),
        ids,
        strict=True,
    )
    if tracked:
        # The Tracker's rows, packed: step t holds the first active[t] sentences (longest first).
        tracks = _StepRows(active, None if keep else pool)
        buffer_gates = tables["buffer_gates"]
        xt = tracks.buffer("xt", leaves, 2 * d)  # h of stack top and second
        act_t = tracks.buffer("act_t", leaves, 4 * dt)
        tanh_ct = tracks.buffer("tanh_ct", leaves, dt)
        h_t, c_t = tables["h_t"], tables["c_t"]
        h_t[:batch] = 0
        c_t[:batch] = 0
        h_rows, c_rows = _TrackerRows(h_t, batch, active), _TrackerRows(c_t, batch, active)
        tracker_steps = zip(
            zip(tracks.views(xt.view(-1, d), "xt_rows", 2), tracks.views(xt, "xt"), strict=True),
            zip(
                tracks.views(act_t, "act_t"),
                tracks.gates(act_t, "act_t", TrackerGates),
                tracks.views(tanh_ct, "tanh_ct"),
                strict=True,
            ),
            zip(h_rows.prev, h_rows.new, c_rows.prev, c_rows.new, strict=True),
            zip(
                schedule.tracker_stack.split([2 * k for k in active]),
                schedule.tracker_buffer.split(active),
                strict=True,
            ),
            strict=True,
        )
    for m, inputs, gates, temp, step_ids in reduce_steps:
        if tracked:
            (xs_rows, xs), (z, tracker_gates, tc), states, (stack, buffer) = next(tracker_steps)
            h_prev, h_new, c_prev, c_new = states
            torch.index_select(h_store, 0, stack, out=xs_rows)
            torch.index_select(buffer_gates, 0, buffer, out=z)
            z.addmm_(xs, cells.tracker_stack).addmm_(h_prev, cells.tracker_hidden)
            cells.tracker(z, tracker_gates, c_prev, c_new, h_new, tc)
        if m == 0:
            continue
        xs_rows, xs, es = inputs
        z, reduce_gates, tc = gates
        cc_rows, c_left, c_right, h, c = temp
        children, rows, tracker_rows = step_ids
        torch.index_select(h_store, 0, children, out=xs_rows)
        torch.addmm(cells.reduce_bias, xs, cells.reduce_children, out=z)
        if tracked:
            torch.index_select(h_t, 0, tracker_rows, out=es)
            z.addmm_(es, cells.reduce_tracker)
        torch.index_select(c_store, 0, children, out=cc_rows)
        cells.reduce(z, reduce_gates, c_left, c_right, c, h, tc)
        c_store.index_copy_(0, rows, c)
        h_store.index_copy_(0, rows, h)
    root_h = h_store.index_select(0, schedule.root)
    saved = [c_store, x, e, act, tanh_c] if keep else []
    if keep and tracked:
        saved += [leaves[:, :d], xt, act_t, h_t, c_t, tanh_ct]
    if not (tracked and tracker_states):
        return root_h, leaves.new_zeros(0), saved
    n_steps = len(active)
    tracker_h = h_t.new_zeros(n_steps * batch, dt).index_copy_(0, schedule.tracker_out, h_t[batch:])
    return root_h, tracker_h.view(n_steps, batch, dt), saved


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, leaves, w_r, b_r, w_t, b_t, schedule: Schedule, tracker_states: bool):
        root_h, tracker_h, saved = _forward(leaves, w_r, b_r, w_t, b_t, schedule, True, tracker_states)
        ctx.set_materialize_grads(False)  # no zeros made for the Tracker's states nobody reads
        ctx.schedule = schedule
        ctx.dims = (w_r.shape[0] // 5, 0 if w_t is None else w_t.shape[0] // 4)
        ctx.save_for_backward(w_r, w_t, *saved)
        return root_h, tracker_h

    @staticmethod
    def backward(ctx, g_root, g_tracker):
        d, dt = ctx.dims
        schedule = ctx.schedule
        batch = schedule.batch_size
        tracked = dt > 0
        w_r, w_t, c_store, x, e, act, tanh_c, *rest = ctx.saved_tensors
        if tracked:
            leaf_h, xt, act_t, h_t, c_t, tanh_ct = rest
            active = schedule.tracker_active
        sizes, ids = _reduce_ids(schedule, tracked)
        # One step's rows of the scratch, kept between calls (`_Scratch`), as in the forward.
        like = c_store
        pool = _scratch.pool(("encode backward", d, dt, like.dtype, like.device), max([*sizes, batch]))
        reduces, scratch = _StepRows(sizes, None), _StepRows(sizes, pool)
        u = scratch.buffer("u", like, 5 * d)
        g_out_h, g_out_c = scratch.buffer("g_out_h", like, d), scratch.buffer("g_out_c", like, d)
        children_c = scratch.buffer("children_c", like, 2, d)  # the children's c, then its gradient
        g_children = scratch.buffer("g_children", like, 2 * d)  # the gradient of the children's h
        shapes = {
            "g_h": c_store.shape,  # (R, D) gradient of each node's h
            "g_c": c_store.shape,
            "dz": act.shape,
            "d_tanh_c": tanh_c.shape,
        }
        if tracked:
            t_scratch = _StepRows(active, pool)
            u_t, g_xt = t_scratch.buffer("u_t", like, 4 * dt), t_scratch.buffer("g_xt", like, 2 * d)
            g_ct = t_scratch.buffer("g_ct", like, dt)
            shapes |= {
                "g_ht": h_t.shape,
                "dz_t": act_t.shape,
                "d_tanh_ct": tanh_ct.shape,
                "g_buffer_gates": (1 + len(leaf_h), 4 * dt),
            }
        ws = _workspace.take(c_store, shapes)
        g_h, g_c = ws["g_h"], ws["g_c"]
        g_h.zero_()
        g_c.zero_()
        if g_root is not None:
            g_h.index_copy_(0, schedule.root, g_root.to(g_h.dtype))
        # The gradient of every REDUCE's gate pre-activations: the activations' derivatives, times (step
        # by step) the gradient of the activations, gathered in one step's scratch rows u.
        dz = activation_grads(act, ReduceGates, out=ws["dz"])
        d_tanh_c = one_minus_square(tanh_c, out=ws["d_tanh_c"])
        w_c, w_e = reduce_blocks(w_r)
        reduce_steps = zip(
            sizes,
            zip(
                reduces.views(dz, "dz"),
                reduces.gates(act, "act", ReduceGates),
                reduces.views(act[:, d : 3 * d].view(-1, 2, d), "forget"),  # both forget gates
                reduces.views(tanh_c, "tanh_c"),
                reduces.views(d_tanh_c, "d_tanh_c"),
                strict=True,
            ),
            zip(
                scratch.views(u, "u"),
                scratch.gates(u, "u", ReduceGates),
                scratch.views(u[:, d : 3 * d].view(-1, 2, d), "u_forget"),
                scratch.views(g_out_h, "g_out_h"),
                scratch.views(g_out_c, "g_out_c"),
                scratch.views(g_out_c[:, None], "g_out_c_pair"),
                strict=True,
            ),
            zip(
                scratch.views(children_c.view(-1, d), "children_c_rows", 2),
                scratch.views(children_c, "children_c"),
                scratch.views(g_children, "g_children"),
                scratch.views(g_children.view(-1, d), "g_children_rows", 2),
                strict=True,
            ),
            ids,
            strict=True,
        )
        if tracked:
            w_buf, w_x, w_hh = tracker_blocks(w_t, d)
            tracks = _StepRows(active, None)
            # Gradients of the Tracker's h, packed like its states; rows past a sentence's last step are
            # outputs fixed at 0, so their gradient stops there.
            g_ht = ws["g_ht"]
            if g_tracker is None:
                g_ht.zero_()
            else:
                g_ht[:batch] = 0
                g_tracker = g_tracker.reshape(-1, dt).to(g_h.dtype)
                torch.index_select(g_tracker, 0, schedule.tracker_out, out=g_ht[batch:])
            g_ct.zero_()  # of the running sentences' c, carried back a step at a time
            dz_t = activation_grads(act_t, TrackerGates, out=ws["dz_t"])
            d_tanh_ct = one_minus_square(tanh_ct, out=ws["d_tanh_ct"])
            g_rows = _TrackerRows(g_ht, batch, active)
            tracker_steps = zip(
                zip(
                    tracks.views(dz_t, "dz_t"),
                    tracks.gates(act_t, "act_t", TrackerGates),
                    tracks.views(tanh_ct, "tanh_ct"),
                    tracks.views(d_tanh_ct, "d_tanh_ct"),
                    _TrackerRows(c_t, batch, active).prev,
                    strict=True,
                ),
                zip(
                    t_scratch.views(u_t, "u_t"),
                    t_scratch.gates(u_t, "u_t", TrackerGates),
                    t_scratch.views(g_ct, "g_ct"),
                    t_scratch.views(g_xt, "g_xt"),
                    t_scratch.views(g_xt.view(-1, d), "g_xt_rows", 2),
                    strict=True,
                ),
                zip(
                    g_rows.prev,
                    g_rows.new,
                    schedule.tracker_stack.split([2 * k for k in active]),
                    strict=True,
                ),
                strict=True,
            )
            tracker_steps = reversed(list(tracker_steps))
        for m, saved, temp, children_temp, step_ids in reversed(list(reduce_steps)):
            if m > 0:
                z, (i, _, _, o, g), f_pair, tc, d_tc = saved
                uz, (ui, _, _, uo, ug), uf_pair, gh, gc, gc_rows = temp
                cc_rows, cc, g_kids, g_kids_rows = children_temp
                children, rows, tracker_rows = step_ids
                torch.index_select(g_h, 0, rows, out=gh)
                torch.index_select(g_c, 0, rows, out=gc)
                torch.mul(gh, tc, out=uo)
                gc.addcmul_(gh.mul_(o), d_tc)
                # Both forget gates at once: the children's c, (M, 2, D).
                torch.index_select(c_store, 0, children, out=cc_rows)
                torch.mul(gc_rows, cc, out=uf_pair)
                torch.mul(gc, g, out=ui)
                torch.mul(gc, i, out=ug)
                z.mul_(uz)
                # Each node has one parent, so its c gradient is written, not added; its h gradient
                # already holds what later Tracker steps read.
                torch.mm(z, w_c, out=g_kids)
                g_h.index_add_(0, children, g_kids_rows)
                torch.mul(gc_rows, f_pair, out=cc)
                g_c.index_copy_(0, children, cc_rows)
                if tracked:
                    g_ht.index_add_(0, tracker_rows, z @ w_e)
            if tracked:
                saved, temp, (gh_prev, gh, stack) = next(tracker_steps)
                z, (i, f, g, o), tc, d_tc, c_prev = saved
                uz, (ui, uf, ug, uo), gc, g_xs, g_xs_rows = temp
                torch.mul(gh, tc, out=uo)
                gc.addcmul_(gh.mul_(o), d_tc)
                torch.mul(gc, c_prev, out=uf)
                torch.mul(gc, g, out=ui)
                torch.mul(gc, i, out=ug)
                z.mul_(uz)
                gc.mul_(f)
                # Row 0 (the empty slot) repeats; its gradient is never used.
                torch.mm(z, w_x, out=g_xs)
                g_h.index_add_(0, stack, g_xs_rows)
                gh_prev.addmm_(z, w_hh)
        g_w_r = torch.cat((dz.t() @ x, dz.t() @ e), dim=1)
        g_b_r = dz.sum(0)
        g_w_t = g_b_t = None
        g_leaf_h = g_h.index_select(0, schedule.leaf_ids)
        if tracked:
            # The buffer tops read at every step; row 0 (an empty buffer) repeats and is never used.
            g_buffer_gates = ws["g_buffer_gates"].zero_()
            g_buffer_gates.index_add_(0, schedule.tracker_buffer, dz_t)
            g_leaf_h.addmm_(g_buffer_gates[1:], w_buf)
            g_w_t = torch.cat(
                (
                    g_buffer_gates[1:].t() @ leaf_h,
                    dz_t.t() @ xt,
                    dz_t.t() @ h_t.index_select(0, schedule.tracker_prev),
                ),
                dim=1,
            )
            g_b_t = dz_t.sum(0)
        g_leaves = torch.cat((g_leaf_h, g_c.index_select(0, schedule.leaf_ids)), dim=1)
        return g_leaves, g_w_r, g_b_r, g_w_t, g_b_t, None, None
