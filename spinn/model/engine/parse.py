"""The engine's loop for a full SPINN following its own predictions without a gradient (evaluation).

What `spinn.model.reference.run_machine` computes when it follows the predictions, outside autograd
with the stock kernels: h and c in separate stores written in place, one step's rows of the buffers
kept between calls, the buffer top's share of the Tracker's gates for every real word in one matmul
before the loop, and the Tracker only on the sentences not yet finished: sorted longest first, those
are a prefix of the batch (the leaf rows of the stores follow that order). The stack pointers advance
on the host (`spinn.schedule.StackPointers`), which reads each step's scores back once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from spinn.model.cells import Kernels, ReduceGates, TrackerGates, split_gates
from spinn.model.engine.memory import Pool, batch_tables, scratch
from spinn.model.reference import best_allowed
from spinn.schedule import StackPointers, longest_first, real_words, running_counts, store_rows
from spinn.transitions import PAD, REDUCE


class StockWeights(NamedTuple):
    """The stock cells' weights, as the loop reads them."""

    tracker_weight: Tensor
    tracker_bias: Tensor
    reduce_weight: Tensor
    reduce_bias: Tensor
    head_weight: Tensor
    head_bias: Tensor


class TrackerRows(NamedTuple):
    """The first k rows of the Tracker's buffers, for a step on k sentences."""

    x: Tensor  # (k, 2 D) the h of the stack top and the item below it
    stack: Tensor  # (2 k, D) a view of x
    z: Tensor  # (k, 4 d_tracker)
    gates: TrackerGates
    h: Tensor  # (k, d_tracker) the state (before or after the step)
    c: Tensor
    tanh_c: Tensor


class ReduceRows(NamedTuple):
    """The first m rows of Reduce's buffers, for a step with m REDUCEs."""

    x: Tensor  # (m, 2 D) [h_left; h_right]
    children_h: Tensor  # (2 m, D) a view of x
    z: Tensor  # (m, 5 D)
    gates: ReduceGates
    tracking: Tensor  # (m, d_tracker)
    children_c: Tensor  # (2 m, D)
    c_left: Tensor
    c_right: Tensor
    c: Tensor  # (m, D) the results
    h: Tensor
    tanh_c: Tensor


class StepBuffers:
    """One step's rows of the loop's buffers and their views for each row count, kept between calls
    (`spinn.model.engine.memory.Scratch`). h0, c0 and h1, c1: the Tracker's state before a step and
    after it (parities alternate); the state before the first step is zero."""

    def __init__(self, pool: Pool, like: Tensor, d: int, dt: int, batch: int) -> None:
        self.pool, self.d = pool, d
        widths = dict(h0=dt, c0=dt, h1=dt, c1=dt, x_t=2 * d, z_t=4 * dt, tanh_t=dt)
        widths |= dict(x_r=2 * d, z_r=5 * d, c_r=d, h_r=d, e_r=dt, tanh_r=d)
        self.buf = {name: pool.tensor(name, like, n) for name, n in widths.items()}
        self.buf["cc_r"] = pool.tensor("cc_r", like, 2, d)  # the children's c
        self.buf["h0"][:batch] = 0
        self.buf["c0"][:batch] = 0

    def tracker(self, k: int, parity: int) -> TrackerRows:
        def make() -> TrackerRows:
            b = self.buf
            h, c = (b["h0"], b["c0"]) if parity == 0 else (b["h1"], b["c1"])
            x, z = b["x_t"][:k], b["z_t"][:k]
            gates = split_gates(z, TrackerGates)
            return TrackerRows(x, x.view(2 * k, self.d), z, gates, h[:k], c[:k], b["tanh_t"][:k])

        return self.pool.cached(("tracker", k, parity), make)

    def reduce(self, m: int) -> ReduceRows:
        def make() -> ReduceRows:
            b = self.buf
            x, z, cc = b["x_r"][:m], b["z_r"][:m], b["cc_r"][:m]
            return ReduceRows(
                x, x.view(2 * m, self.d), z, split_gates(z, ReduceGates), b["e_r"][:m],
                cc.view(2 * m, self.d), cc[:, 0], cc[:, 1], b["c_r"][:m], b["h_r"][:m], b["tanh_r"][:m],
            )  # fmt: skip

        return self.pool.cached(("reduce", m), make)


class Parse(NamedTuple):
    """What the loop shares between steps."""

    kernels: Kernels
    tables: dict[str, Tensor]  # the node stores and the buffer tops' gates
    rows: StepBuffers
    pointers: StackPointers
    buffer_row: np.ndarray  # a leaf's node id -> its row of the buffer gates
    head: tuple[Tensor, Tensor]  # the transition head's weight and bias
    device: torch.device


def follow_predictions(
    leaves: Tensor, lengths: Tensor, n_words: int, weights: StockWeights
) -> tuple[Tensor, Tensor, Tensor]:
    """(B, T, 2) logits, (B, T) transitions and (B, D) root h of a full SPINN following its best valid
    predicted transition at each step. ``leaves`` (W, 2 D) are the real words' [h; c], sentence after
    sentence."""
    batch, n_steps, device = len(lengths), 2 * n_words - 1, leaves.device
    lengths = lengths.to(device)
    order, rank = longest_first(lengths)
    # The host read outside the loop: how many sentences still run at each step (non-increasing;
    # the steps past the longest sentence are dropped).
    active = [k for k in running_counts(lengths, n_steps).tolist() if k]
    # Word i of sentence b is node 1 + rank[b] N + i: the stores' leaf rows follow the longest-first order.
    leaf_rows = real_words(lengths, n_words)[0]
    leaf_ids = 1 + rank.index_select(0, leaf_rows // n_words) * n_words + leaf_rows % n_words
    # Row 1 + j of buffer_gates is for the j-th real word; buffer_row maps a leaf's node id to it.
    buffer_row = leaves.new_zeros(1 + batch * n_words, dtype=torch.long)
    buffer_row[leaf_ids] = torch.arange(1, 1 + len(leaf_ids), device=device)
    # One dtype throughout (bf16 under autocast), as in `encode_given`.
    w = StockWeights(*(p.detach().to(leaves.dtype) for p in weights))
    with torch.autocast(device.type, enabled=False):
        kernels = Kernels(w.reduce_weight, w.reduce_bias, w.tracker_weight, w.tracker_bias)
        d, dt = leaves.shape[1] // 2, kernels.d_tracker
        pool = scratch.pool(("parse", d, dt, leaves.dtype, device), batch)
        parse = Parse(
            kernels=kernels,
            tables=batch_tables(kernels, leaves, leaf_ids, store_rows(batch, n_words), fresh=False),
            rows=StepBuffers(pool, leaves, d, dt, batch),
            pointers=StackPointers(lengths[order].cpu().numpy(), n_words),
            buffer_row=buffer_row.cpu().numpy(),
            head=(w.head_weight, w.head_bias),
            device=device,
        )
        logits = w.head_bias.expand(n_steps, batch, 2).clone()  # a zero state's scores past the last step
        actions = np.full((n_steps, batch), int(PAD))
        for t, (k, step_logits) in enumerate(zip(active, logits.unbind(0), strict=False)):
            _step(parse, t, k, step_logits, actions[t])
        root = torch.from_numpy(parse.pointers.root()).to(device).index_select(0, rank)
        h = parse.tables["h_store"].index_select(0, root)
    actions = torch.from_numpy(actions).to(device)
    return logits.transpose(0, 1).index_select(0, rank), actions.t().index_select(0, rank), h


def _step(parse: Parse, t: int, k: int, step_logits: Tensor, actions: np.ndarray) -> None:
    """Step t on the k sentences still running: the Tracker, the scores, the transitions chosen on the
    host (into ``actions``), and the REDUCEs."""
    kernels, pointers, h_store = parse.kernels, parse.pointers, parse.tables["h_store"]
    tr, new = parse.rows.tracker(k, t % 2), parse.rows.tracker(k, 1 - t % 2)
    ids = pointers.tracker_ids()[:k]  # buffer top, stack top, second
    # The Tracker's indices in one host-to-device copy: the buffer tops' rows of buffer_gates, then the
    # stack tops' ids.
    reads = np.concatenate((parse.buffer_row[ids[:, 0]], ids[:, 1:].reshape(-1)))
    buffer_top, stack = torch.from_numpy(reads).to(parse.device).split_with_sizes((k, 2 * k))
    torch.index_select(parse.tables["buffer_gates"], 0, buffer_top, out=tr.z)
    torch.index_select(h_store, 0, stack, out=tr.stack)
    tr.z.addmm_(tr.x, kernels.tracker_stack).addmm_(tr.h, kernels.tracker_hidden)
    kernels.tracker(tr.z, tr.gates, tr.c, new.c, new.h, tr.tanh_c)
    w_p, b_p = parse.head
    scores = torch.addmm(b_p, new.h, w_p.t(), out=step_logits[:k])
    # The step's one host read: the scores, to pick the transitions and the REDUCEs.
    can = (pointers.can_shift()[:k], pointers.can_reduce()[:k])
    action = actions[:k] = best_allowed(scores.float().cpu().numpy(), *can)
    target = pointers.advance(actions)
    reducing = np.flatnonzero(action == int(REDUCE))
    m = len(reducing)
    if not m:
        return
    # The children as [left; right] (the second item, then the stack top), the REDUCEs' rows and the
    # rows their results go to.
    rows = np.concatenate((ids[reducing][:, [2, 1]].reshape(-1), reducing, target[reducing]))
    children, reducers, out = torch.from_numpy(rows).to(parse.device).split_with_sizes((2 * m, m, m))
    r, c_store = parse.rows.reduce(m), parse.tables["c_store"]
    torch.index_select(h_store, 0, children, out=r.children_h)
    torch.addmm(kernels.reduce_bias, r.x, kernels.reduce_children, out=r.z)
    r.z.addmm_(torch.index_select(new.h, 0, reducers, out=r.tracking), kernels.reduce_tracker)
    torch.index_select(c_store, 0, children, out=r.children_c)
    kernels.reduce(r.z, r.gates, r.c_left, r.c_right, r.c, r.h, r.tanh_c)
    c_store.index_copy_(0, out, r.c)
    h_store.index_copy_(0, out, r.h)
