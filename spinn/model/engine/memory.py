"""The engine's memory: what its loops reuse between calls instead of allocating it afresh.

* `Workspace`: a batch's tables (node stores, gradient stores, the Tracker's states), carved out of
  one buffer per thread kept between calls on the CPU;
* `Scratch` and `Pool`: one step's rows of a loop's buffers, and their views, kept between calls;
* `StepRows`: each step's rows of one pass's buffers, one view per step made before the loop;
* `TrackerRows`: the Tracker's packed states, each step's previous state a prefix of the last one's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from torch import Tensor

from spinn.model.cells import Kernels, ReduceGates, TrackerGates, split_gates


class Workspace(threading.local):
    """The batch-sized tensors of a loop that copies its results out -- the backward's (gradient stores,
    activation derivatives) and, without a gradient, the forward's (node stores, the Tracker's states,
    the buffer tops' gates) -- carved out of one buffer per thread that is kept between calls; one
    step's rows of their scratch come from `Scratch`.

    On the CPU a fresh tensor of a few MB is often memory the allocator has just handed back to the
    system, and touching it again costs a page fault per 4 KB (benchmarks/README.md has the figures).
    Nothing here outlives the call that takes it, and a thread runs one such call at a time. The
    buffer holds the largest call's tables so far. Other devices have caching allocators, so there
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


workspace = Workspace()


class Pool:
    """One step's rows of a loop's buffers and the views of their first m rows, kept between calls (see
    `Scratch`): buffers of ``rows`` rows, by name, and views cached by key."""

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


class Scratch(threading.local):
    """Pools of one step's rows for the loops that reuse those rows at every step (evaluation, and a
    training forward's scratch), kept between calls per thread with their views.

    A loop reads a step's rows through views of the first m rows of each buffer, one per step size m.
    With the same buffers from one batch to the next the views are the same too, so a batch makes
    none (each costs about as much as a small kernel). A pool grows to the largest step so far (a batch
    that needs more rows gets a new one, and the old one goes). Nothing outlives the call that takes
    it, and a thread runs one loop at a time.
    """

    def __init__(self) -> None:
        self.pools: dict[tuple, Pool] = {}

    def pool(self, key: tuple, rows: int) -> Pool:
        """The pool for ``key`` (the loop and its shapes, dtype and device) with at least ``rows`` rows."""
        pool = self.pools.get(key)
        if pool is None or pool.rows < rows:
            pool = self.pools[key] = Pool(rows)
        return pool


scratch = Scratch()


class StepRows:
    """Where each step's rows go in the buffers of one pass, as one view per step made before the loop.

    Without a pool (the backward reads them: ``keep``) every step has its own rows, one step after
    another, in fresh buffers; with one (no gradient needed, and scratch) one step's rows of the
    pool's buffers are reused at every step: a small buffer that stays in cache, instead of fresh
    memory the system has to fault in page by page at every batch, and its views last between calls.
    The views are made in bulk (`Tensor.split`, or kept by the pool) because slicing inside the loop
    costs as much as some of the kernels.
    """

    def __init__(self, sizes: list[int], pool: Pool | None) -> None:
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


class TrackerRows:
    """The Tracker's state, packed: rows 0..B-1 are the zero initial state, then each step's rows (the
    first ``tracker_active[t]`` sentences of ``tracker_order``). Step t starts from a prefix of the rows
    step t - 1 wrote, so no step gathers its previous state."""

    def __init__(self, state: Tensor, batch: int, active: list[int]) -> None:
        self.new = list(state[batch:].split(active))
        self.prev = [state[: active[0]], *(s[:k] for s, k in zip(self.new[:-1], active[1:], strict=True))]


def batch_tables(
    cells: Kernels, leaves: Tensor, leaf_ids: Tensor, n_rows: int, fresh: bool, **shapes: tuple[int, ...]
) -> dict[str, Tensor]:
    """A batch's tables: the node stores "h_store" and "c_store" (n_rows, D) with zeros in row 0 (the
    empty slot) and the leaves' [h; c] in the rows ``leaf_ids`` (the other rows are written before they
    are read; rows of padding never are); with a Tracker, "buffer_gates" (`Kernels.buffer_gates`); and
    the tables of ``shapes``, unwritten. Fresh (``fresh``: the caller keeps them, as the backward
    reads the training forward's), else from the kept workspace (`Workspace`)."""
    d = leaves.shape[1] // 2
    shapes |= {"h_store": (n_rows, d), "c_store": (n_rows, d)}
    if cells.tracked:
        shapes["buffer_gates"] = (1 + len(leaves), len(cells.tracker_bias))
    tables = workspace.take(leaves, shapes, fresh=fresh)
    for name, part in (("h_store", leaves[:, :d]), ("c_store", leaves[:, d:])):
        tables[name][0] = 0
        tables[name].index_copy_(0, leaf_ids, part)
    if cells.tracked:
        cells.buffer_gates(leaves[:, :d], out=tables["buffer_gates"])
    return tables
