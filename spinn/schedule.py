"""Stack pointers and the per-batch schedule of a SPINN forward pass.

The batched stack never moves vectors around. Every node of every tree in a batch of B sentences of
at most N words owns one row of a node store (see `spinn.model.engine`):

* row 0 is all zeros and stands for an empty stack or buffer slot;
* rows ``1 + b * N + i`` are the leaves (word i of sentence b);
* rows ``1 + B * N + b * (N - 1) + j`` are the internal nodes (the j-th REDUCE of sentence b);
* the last row is scratch space that absorbs writes nobody reads.

A stack is then a row of node ids, ``StackPointers.ids`` (B, N + 3): slots 0 and 1 always hold 0 so
that the top two items of a short stack read as zeros, and the k-th item from the bottom sits in slot
k + 2. SHIFT writes a leaf id above the top; REDUCE writes a new internal node id over the second item.

When the transitions are given, every id the forward pass needs depends only on them, so
`build_schedule` works them all out once per batch (on the CPU, for example in a collate function)
and the step loop only indexes with precomputed tensors: no host round trip per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from spinn.errors import ParseError, SpinnError
from spinn.transitions import PAD, REDUCE, SHIFT

# Plain ints for the host-side steps: numpy looks its protocols up on an IntEnum's class at every
# comparison, which costs microseconds each.
_SHIFT, _REDUCE = int(SHIFT), int(REDUCE)


def store_rows(batch_size: int, n_words: int) -> int:
    """Rows of the node store for a batch: zero row, leaves, internal nodes, scratch row."""
    return 1 + batch_size * n_words + batch_size * (n_words - 1) + 1


class StackPointers:
    """The node ids on each sentence's stack, its depth and its buffer position, advanced in batch.

    Kept on the host as numpy arrays of B entries: a few numpy calls per step cost less than the same
    as tensor ops, and both users read each step there anyway -- `build_schedule` on the CPU from given
    transitions, and a full SPINN following its predictions (one read of its scores per step).
    """

    def __init__(self, lengths: np.ndarray, n_words: int) -> None:
        batch = len(lengths)
        self.rows = np.arange(batch)
        self.lengths = lengths
        self.ids = np.zeros((batch, n_words + 3), dtype=np.int64)  # (B, N + 3)
        self.depth = np.zeros(batch, dtype=np.int64)  # items on the stack
        self.buffer = np.zeros(batch, dtype=np.int64)  # words shifted so far
        self.reduced = np.zeros(batch, dtype=np.int64)  # REDUCEs so far
        self.leaf_base = 1 + self.rows * n_words
        self.node_base = 1 + batch * n_words + self.rows * (n_words - 1)
        self.scratch = store_rows(batch, n_words) - 1

    def can_shift(self) -> np.ndarray:
        return self.buffer < self.lengths

    def can_reduce(self) -> np.ndarray:
        return self.depth >= 2

    def tracker_ids(self) -> np.ndarray:
        """(B, 3) ids of the buffer top, the stack top and the item below it (0 where absent)."""
        out = np.empty((len(self.rows), 3), dtype=np.int64)  # filled by column: np.stack costs more
        out[:, 0] = np.where(self.can_shift(), self.leaf_base + self.buffer, 0)
        out[:, 1] = self.ids[self.rows, self.depth + 1]
        out[:, 2] = self.ids[self.rows, self.depth]
        return out

    def advance(self, action: np.ndarray) -> np.ndarray:
        """Apply one transition per sentence (PAD leaves a sentence as it is).

        Returns:
            (B,) the row id the REDUCE result goes to, or the scratch row where there is no REDUCE.
        """
        shift, reduce = action == _SHIFT, action == _REDUCE
        new_node = self.node_base + self.reduced
        moved = shift | reduce
        pos = np.where(shift, self.depth + 2, self.depth)[moved]
        self.ids[self.rows[moved], pos] = np.where(shift, self.leaf_base + self.buffer, new_node)[moved]
        self.depth += shift.astype(np.int64) - reduce
        self.buffer += shift
        self.reduced += reduce
        return np.where(reduce, new_node, self.scratch)

    def root(self) -> np.ndarray:
        """(B,) the id of the bottom stack item: the sentence's tree once all transitions ran."""
        return self.ids[:, 2].copy()


@dataclass
class Schedule:
    """Every node id the forward pass over given transitions needs, for one batch.

    Attributes:
        n_rows: rows of the node store.
        leaf_rows: (W,) b N + i for each real word i of sentence b (W of them, sentence-major): the rows
            of the padded (B N, ...) words that are read; padding is never projected.
        leaf_ids: (W,) the node id of each of those words, ``1 + leaf_rows``.
        tracker_order: (B,) the sentences from the longest to the shortest (stable): the Tracker works
            on them in this order, so that the sentences still running at step t are the first
            ``tracker_active[t]`` and a step reads a prefix instead of gathering.
        tracker_active: T ints, how many sentences have a real (non-PAD) transition at each step.
        tracker_buffer: (P,) the buffer top of each running sentence before each step's transition, as
            1 + its index in ``leaf_rows`` (0 when the buffer is empty), packed: step t holds
            ``tracker_active[t]`` of them in ``tracker_order``, after step t - 1's (P = sum of
            ``tracker_active``).
        tracker_stack: (2 P,) the ids of the stack top and the item below it, packed the same way.
        tracker_prev: (P,) the row of the packed Tracker state (`spinn.model.engine.memory.TrackerRows`)
            that each packed step row starts from: rows 0..B-1 are the zero initial state, row B + p holds the
            state after packed row p.
        tracker_out: (P,) t B + b for the packed row of sentence b at step t: where it goes in the
            (T, B) output.
        step_tracker: (R,) the packed Tracker state row each REDUCE reads (its sentence's Tracker h
            after that step), grouped by step.
        step_children: (2 R,) the (left, right) children of each REDUCE in turn, grouped by step: gathering
            their rows gives (2 M, D) that views as (M, 2 D) [h_left; h_right] with no copy.
        step_out: (R,) the row each REDUCE writes, grouped by step.
        step_offsets: T + 1 ints; step t's REDUCEs are ``step_out[step_offsets[t]:step_offsets[t+1]]``.
        level_children, level_out, level_offsets: the same REDUCEs grouped by tree level (a node's level
            is one more than its higher child's, leaves are level 0), for the encoder without a Tracker.
        root: (B,) the id of each sentence's root.
        transitions, lengths: copies of what the schedule was built from, so that `check_matches` can
            refuse a schedule passed with other transitions of the same shape.
    """

    n_rows: int
    batch_size: int
    n_words: int
    leaf_rows: Tensor
    leaf_ids: Tensor
    tracker_order: Tensor
    tracker_active: list[int]
    tracker_buffer: Tensor
    tracker_stack: Tensor
    tracker_prev: Tensor
    tracker_out: Tensor
    step_tracker: Tensor
    step_children: Tensor
    step_out: Tensor
    step_offsets: list[int]
    level_children: Tensor
    level_out: Tensor
    level_offsets: list[int]
    root: Tensor
    transitions: Tensor
    lengths: Tensor

    def check_fits(self, batch_size: int, n_words: int) -> None:
        """Raises SpinnError unless this is the schedule of a batch of ``batch_size`` sentences padded to
        ``n_words`` words."""
        if (self.batch_size, self.n_words) != (batch_size, n_words):
            raise SpinnError(
                f"the schedule is for {self.batch_size} sentences of {self.n_words} words, "
                f"the batch has {batch_size} of {n_words}"
            )

    def check_matches(self, transitions: Tensor, lengths: Tensor) -> None:
        """Raises SpinnError unless this schedule was built from ``transitions`` and ``lengths``.

        Compared whole, which costs little next to building a schedule; on an accelerator the
        comparison waits for the device.
        """
        _check_same("transitions", self.transitions, transitions)
        _check_same("lengths", self.lengths, lengths)

    def to(self, device: torch.device | str) -> Schedule:
        move = {
            k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
            for k, v in self.__dict__.items()
        }
        return Schedule(**move)


def as_long_tensor(values: Tensor | Sequence, name: str, device: torch.device | str | None = None) -> Tensor:
    """``values`` as a long tensor: a tensor where it is, a (nested) list of ints on ``device``.

    Raises:
        SpinnError: naming ``name``, when ``values`` is not a rectangular array of integers.
    """
    if isinstance(values, Tensor):
        if values.is_floating_point() or values.is_complex():
            raise SpinnError(f"{name}: expected integers, found a tensor of {values.dtype}")
        return values.long()
    try:
        tensor = torch.as_tensor(values, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise SpinnError(f"{name}: expected a tensor or a rectangular list of ints, found {e}") from None
    if tensor.is_floating_point() or tensor.is_complex():
        raise SpinnError(f"{name}: expected integers, found {tensor.dtype} values")
    return tensor.long()


def build_schedule(transitions: Tensor | Sequence, lengths: Tensor | Sequence[int]) -> Schedule:
    """Work out, on the CPU, every node id a forward pass over the given transitions uses.

    Args:
        transitions: (B, 2N - 1) long, SHIFT/REDUCE right-padded with PAD (`spinn.data.batching`);
            a list of B equal-length lists of ints is taken too.
        lengths: (B,) long, the number of words of each sentence (>= 1), or a list of B ints.

    Raises:
        SpinnError: transitions or lengths that are not integers in a rectangular array.
        ParseError: a sentence's transitions do not build one binary tree over its words, or its
            padding does not start right after its 2n - 1 transitions.
    """
    transitions, lengths = _cpu_batch(transitions, lengths)
    batch, steps = transitions.shape
    n_words = (steps + 1) // 2
    _check_padding(transitions, lengths, n_words)
    walk = _walk(transitions, lengths, n_words)
    levels = _group_by_level(walk)
    tracker = _pack_tracker(walk, lengths, n_words)
    return Schedule(
        n_rows=store_rows(batch, n_words),
        batch_size=batch,
        n_words=n_words,
        leaf_rows=tracker.leaf_rows,
        leaf_ids=1 + tracker.leaf_rows,
        tracker_order=tracker.order,
        tracker_active=tracker.active,
        tracker_buffer=tracker.buffer,
        tracker_stack=tracker.stack,
        tracker_prev=tracker.prev,
        tracker_out=tracker.out,
        step_tracker=tracker.step_tracker,
        step_children=walk.children,
        step_out=walk.out,
        step_offsets=[0, *walk.counts.cumsum(0).tolist()],
        level_children=levels.children,
        level_out=levels.out,
        level_offsets=levels.offsets,
        root=walk.root,
        # Copies: a caller refilling its tensors in place would otherwise change what was checked.
        transitions=transitions.clone(),
        lengths=lengths.clone(),
    )


class _Walk(NamedTuple):
    """What one pass of the stack pointers over a batch's transitions records, REDUCEs grouped by step."""

    tracker_ids: Tensor  # (T, B, 3) buffer top, stack top and the item below it, before each step
    sentence: Tensor  # (R,) the sentence of each REDUCE
    counts: Tensor  # (T,) REDUCEs at each step
    children: Tensor  # (2 R,) (left, right) of each REDUCE
    out: Tensor  # (R,) the row each REDUCE writes
    level: Tensor  # (n_rows,) each node's tree level: leaves 0, a REDUCE one more than its higher child
    root: Tensor  # (B,)


class _Levels(NamedTuple):
    """The REDUCEs grouped by tree level (`Schedule.level_children` and the rest)."""

    children: Tensor
    out: Tensor
    offsets: list[int]


class _PackedTracker(NamedTuple):
    """The Tracker's packed rows (`Schedule.tracker_order` to `Schedule.step_tracker`) and the real words."""

    order: Tensor
    active: list[int]
    buffer: Tensor
    stack: Tensor
    prev: Tensor
    out: Tensor
    step_tracker: Tensor
    leaf_rows: Tensor


def _cpu_batch(transitions: Tensor | Sequence, lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """``transitions`` (B, T) and ``lengths`` (B,) as long tensors on the CPU, or SpinnError."""
    transitions = as_long_tensor(transitions, "transitions").to("cpu")
    lengths = as_long_tensor(lengths, "lengths").to("cpu")
    if transitions.dim() != 2 or lengths.dim() != 1:
        raise SpinnError(
            f"transitions have shape {tuple(transitions.shape)} and lengths {tuple(lengths.shape)}, "
            f"expected (B, 2N - 1) and (B,)"
        )
    return transitions, lengths


def _walk(transitions: Tensor, lengths: Tensor, n_words: int) -> _Walk:
    """Run the stack pointers over every step, raising ParseError at the first impossible transition."""
    pointers = StackPointers(lengths.numpy(), n_words)
    level = np.zeros(store_rows(len(lengths), n_words), dtype=np.int64)
    tracker_ids, sentences, lefts, rights, outs = [], [], [], [], []
    for t, action in enumerate(transitions.numpy().T):
        bad = ((action == _SHIFT) & ~pointers.can_shift()) | ((action == _REDUCE) & ~pointers.can_reduce())
        if bad.any():
            b = int(bad.argmax())
            what = "SHIFT with an empty buffer" if action[b] == _SHIFT else "REDUCE with < 2 stack items"
            raise ParseError(f"sentence {b} of the batch, transition {t}: {what}")
        ids = pointers.tracker_ids()
        out = pointers.advance(action)
        rows = np.flatnonzero(action == _REDUCE)
        left, right, out = ids[rows, 2], ids[rows, 1], out[rows]
        level[out] = np.maximum(level[left], level[right]) + 1
        tracker_ids.append(ids)
        sentences.append(rows)
        lefts.append(left)
        rights.append(right)
        outs.append(out)
    return _Walk(
        tracker_ids=torch.from_numpy(np.stack(tracker_ids)),
        sentence=torch.from_numpy(np.concatenate(sentences)),
        counts=torch.tensor([len(rows) for rows in sentences], dtype=torch.long),
        children=torch.from_numpy(np.stack((np.concatenate(lefts), np.concatenate(rights)), 1).reshape(-1)),
        out=torch.from_numpy(np.concatenate(outs)),
        level=torch.from_numpy(level),
        root=torch.from_numpy(pointers.root()),
    )


def _group_by_level(walk: _Walk) -> _Levels:
    order = torch.sort(walk.level[walk.out], stable=True)
    counts = torch.bincount(order.values, minlength=1)[1:]  # levels 1..height
    return _Levels(
        children=walk.children.view(-1, 2)[order.indices].reshape(-1),
        out=walk.out[order.indices],
        offsets=[0, *counts.cumsum(0).tolist()],
    )


def _pack_tracker(walk: _Walk, lengths: Tensor, n_words: int) -> _PackedTracker:
    """Packed Tracker rows: step t's running sentences are the first active[t] of the order."""
    steps, batch = walk.tracker_ids.shape[:2]
    order, rank = longest_first(lengths)
    active = running_counts(lengths, steps)
    running = torch.arange(batch)[None, :] < active[:, None]  # (T, B) in order
    starts = active.cumsum(0) - active  # first packed row of each step
    prev_start = torch.cat((starts.new_zeros(1), batch + starts[:-1]))
    tracker_ids = walk.tracker_ids[:, order]
    leaf_rows, packed_leaf = real_words(lengths, n_words)
    step_of_reduce = torch.repeat_interleave(torch.arange(steps), walk.counts)
    return _PackedTracker(
        order=order,
        active=active.tolist(),
        buffer=packed_leaf[tracker_ids[..., 0][running]],
        stack=tracker_ids[..., 1:][running].reshape(-1),
        prev=(prev_start[:, None] + torch.arange(batch))[running],
        out=(torch.arange(steps)[:, None] * batch + order)[running],
        step_tracker=batch + starts[step_of_reduce] + rank[walk.sentence],
        leaf_rows=leaf_rows,
    )


def _check_same(name: str, built_from: Tensor, given: Tensor) -> None:
    given = given.to(built_from.device, torch.long)
    if not torch.equal(built_from, given):
        differ = (built_from != given).view(len(given), -1).any(1)
        raise SpinnError(
            f"the schedule was built from other {name} than the ones given (first at sentence "
            f"{int(differ.nonzero()[0, 0])} of the batch): pass build_schedule(transitions, lengths) of "
            f"this batch, or schedule=None"
        )


def longest_first(lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(order, rank): the sentences from the longest to the shortest (stable), and each sentence's
    position in that order. The Tracker runs in this order, so the sentences still running at a step
    are a prefix of the batch."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return order, rank


def running_counts(lengths: Tensor, steps: int) -> Tensor:
    """(T,) how many sentences have a real (non-PAD) transition at each of ``steps`` steps."""
    return (2 * lengths - 1 > torch.arange(steps, device=lengths.device)[:, None]).sum(1)


def real_words(lengths: Tensor, n_words: int) -> tuple[Tensor, Tensor]:
    """(leaf_rows, packed): b N + i for each real word i of sentence b, sentence-major (the rows of
    the flattened (B N) padded tokens or words that are real, ``Schedule.leaf_rows``); and for each
    node id up to the last leaf's, 1 + the index of its word in leaf_rows (0 for the empty slot and
    for padding)."""
    leaf_rows = (torch.arange(n_words, device=lengths.device) < lengths[:, None]).view(-1).nonzero()[:, 0]
    packed = torch.zeros(1 + len(lengths) * n_words, dtype=torch.long, device=lengths.device)
    packed[1 + leaf_rows] = torch.arange(1, 1 + len(leaf_rows), device=lengths.device)
    return leaf_rows, packed


def _check_padding(transitions: Tensor, lengths: Tensor, n_words: int) -> None:
    if transitions.shape[1] != 2 * n_words - 1:
        raise ParseError(f"transitions have {transitions.shape[1]} steps, expected an odd number 2N - 1")
    if len(lengths) != len(transitions):
        raise ParseError(f"{len(lengths)} lengths for {len(transitions)} transition sequences")
    if (lengths < 1).any() or (lengths > n_words).any():
        b = int(((lengths < 1) | (lengths > n_words)).nonzero()[0, 0])
        raise ParseError(f"sentence {b} of the batch has length {int(lengths[b])}, expected 1..{n_words}")
    unknown = (transitions < int(SHIFT)) | (transitions > int(PAD))
    if unknown.any():
        b, t = (int(i) for i in unknown.nonzero()[0])
        raise ParseError(
            f"sentence {b} of the batch, transition {t}: {int(transitions[b, t])}, expected SHIFT (0), "
            f"REDUCE (1) or PAD (2)"
        )
    real = torch.arange(transitions.shape[1])[None, :] < (2 * lengths - 1)[:, None]
    wrong = real == (transitions == PAD)
    if wrong.any():
        b, t = (int(i) for i in wrong.nonzero()[0])
        raise ParseError(
            f"sentence {b} of the batch ({int(lengths[b])} words, {2 * int(lengths[b]) - 1} transitions): "
            f"transition {t} is {int(transitions[b, t])}, expected {'SHIFT/REDUCE' if real[b, t] else 'PAD'}"
        )
