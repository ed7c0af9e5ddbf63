"""The definition of SPINN: the shift-reduce machine run one step at a time, as plainly as it can be.

This is the model `spinn.model.SPINN` computes, written to be read: the fast engine must agree with
it, and it is the general path, the one that runs when the cells are not the stock ones (a subclass
of `Reduce`, another composition, a user's own module).

The machine, for a batch of B sentences:

* every node of every tree has an id; its state (``[h; ...]``, h in the first ``d_hidden`` columns)
  is ``nodes[id]``. Id 0 is the empty slot, all zeros; ids 1..W are the words, sentence after
  sentence; each REDUCE appends a new node. States are kept one per id in a list and stacked per
  step, so that autograd's backward is as long as the forward: linear in the sentence length;
* each sentence has a **buffer** (its words' ids, the first word on top) and a **stack** of ids;
* at step t every sentence with a transition left (``t < 2 n - 1``) is running. With a Tracker, its
  LSTM reads the h of the buffer top, the stack top and the item below it (zeros where absent) and
  updates its state; a full SPINN scores SHIFT/REDUCE from the new h (``transition_head``) and, when
  it follows its own predictions, takes the best allowed transition (`best_allowed`);
* SHIFT moves the buffer top onto the stack; REDUCE pops the top two items (right, then left) and
  pushes ``reduce(left, right, tracking)``, tracking being the Tracker's new h (None without one),
  one call for all the sentences reducing at that step;
* after the last step each stack holds one id: the sentence's root, whose h is the sentence vector.

The cells are called as ordinary modules: any module with their interface runs here (see `SPINN`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from spinn.transitions import PAD, REDUCE, SHIFT

Array = TypeVar("Array", Tensor, np.ndarray)

#: The id of an empty stack or buffer slot, whose state is all zeros.
EMPTY = 0


@dataclass
class Cells:
    """The modules the machine calls.

    Attributes:
        reduce: the composition, ``reduce(left, right, tracking) -> (M, d_state)`` from the children's
            states (M, d_state) and the Tracker's h (M, d_tracker) or None.
        d_hidden: the size of h, the first columns of a state.
        tracker: ``tracker(x, (h, c)) -> (h, c)``, x (K, 3 d_hidden) the h of the buffer top, stack
            top and second item, h and c (K, d_tracker); or None.
        transition_head: SHIFT/REDUCE scores (K, 2) from the Tracker's h, or None.
    """

    reduce: nn.Module
    d_hidden: int
    tracker: nn.Module | None = None
    transition_head: nn.Module | None = None


@dataclass
class MachineOutput:
    """What `run_machine` returns.

    Attributes:
        h: (B, d_hidden) the h of each sentence's root.
        transition_logits: (B, T, 2) the transition scores after each step (a zero Tracker state's
            scores past a sentence's last step), or None without a transition head.
        transitions: (B, T) long, the transitions followed, PAD after a sentence's last step.
    """

    h: Tensor
    transition_logits: Tensor | None
    transitions: Tensor


class Machine:
    """The buffers and stacks of node ids of a batch, and the node states."""

    def __init__(self, leaves: Tensor, lengths: list[int]) -> None:
        self.nodes = [leaves.new_zeros(leaves.shape[1]), *leaves.unbind(0)]
        starts = np.cumsum([1, *lengths[:-1]]).tolist()
        self.buffers = [list(range(s + n - 1, s - 1, -1)) for s, n in zip(starts, lengths, strict=True)]
        self.stacks: list[list[int]] = [[] for _ in lengths]

    def states(self, ids: list[int]) -> Tensor:
        """(len(ids), d_state) the states of the nodes ``ids``."""
        return torch.stack([self.nodes[i] for i in ids])

    def tracker_input(self, running: list[int], d_hidden: int) -> Tensor:
        """(K, 3 d_hidden) the h of the buffer top, the stack top and the item below it (zeros where
        absent) of each running sentence."""
        ids = [[_top(self.buffers[b], 1), _top(self.stacks[b], 1), _top(self.stacks[b], 2)] for b in running]
        return self.states([i for three in ids for i in three])[:, :d_hidden].reshape(len(running), -1)

    def allowed(self, running: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(can SHIFT, can REDUCE) of each running sentence."""
        can_shift = np.array([len(self.buffers[b]) > 0 for b in running], dtype=bool)
        can_reduce = np.array([len(self.stacks[b]) >= 2 for b in running], dtype=bool)
        return can_shift, can_reduce

    def apply(
        self, actions: list[int], running: list[int], tracking: Tensor | None, reduce: nn.Module
    ) -> None:
        """One step: SHIFT moves the buffer top's id onto the stack; the sentences that REDUCE compose
        their top two items in one call and push the new nodes. ``actions`` and ``tracking``
        (K, d_tracker) follow ``running``'s order."""
        reducing = []
        for k, (b, action) in enumerate(zip(running, actions, strict=True)):
            if action == SHIFT:
                self.stacks[b].append(self.buffers[b].pop())
            else:
                reducing.append((k, b))
        if not reducing:
            return
        left = self.states([self.stacks[b][-2] for _, b in reducing])
        right = self.states([self.stacks[b][-1] for _, b in reducing])
        if tracking is not None:
            tracking = tracking[torch.tensor([k for k, _ in reducing], device=tracking.device)]
        for (_, b), state in zip(reducing, reduce(left, right, tracking).unbind(0), strict=True):
            del self.stacks[b][-2:]
            self.stacks[b].append(len(self.nodes))
            self.nodes.append(state)

    def roots(self) -> Tensor:
        """(B, d_state) the state of each stack's bottom item: its tree once all transitions ran."""
        return self.states([stack[0] for stack in self.stacks])


def best_allowed(logits: Array, can_shift: Array, can_reduce: Array) -> Array:
    """From (..., 2) SHIFT/REDUCE logits, the higher-scoring transition among those allowed (SHIFT
    needs a word in the buffer, REDUCE two items on the stack; a tie goes to SHIFT). On tensors or on
    numpy arrays."""
    xp = np if isinstance(logits, np.ndarray) else torch
    return xp.where(can_reduce & (~can_shift | (logits[..., 1] > logits[..., 0])), int(REDUCE), int(SHIFT))


@torch.compiler.disable  # a Python loop over steps and sentences: nothing for torch.compile to capture
def run_machine(
    cells: Cells, leaves: Tensor, lengths: list[int], transitions: list[list[int]] | None, n_steps: int
) -> MachineOutput:
    """Run the shift-reduce machine over a batch.

    Args:
        cells: the modules to call.
        leaves: (W, d_state) the state of each real word, sentence after sentence (W = sum of lengths).
        lengths: B ints, words per sentence (>= 1).
        transitions: B rows of at least 2 n - 1 SHIFT/REDUCE each (only those are read), or None to
            follow the best allowed predicted transition (needs a transition head).
        n_steps: T, the steps to run and report (at least the longest sentence's 2 n - 1).
    """
    batch, tracker, head = len(lengths), cells.tracker, cells.transition_head
    machine = Machine(leaves, lengths)
    if tracker is not None:
        h = c = leaves.new_zeros(batch, tracker.d_tracker)  # the Tracker's state, (B, d_tracker) each
    logits, followed = [], np.full((batch, n_steps), int(PAD))
    for t in range(n_steps):
        running = [b for b in range(batch) if t < 2 * lengths[b] - 1]
        tracking = step_logits = None
        if tracker is not None and running:
            rows = torch.tensor(running, device=leaves.device)
            tracking, c_new = tracker(machine.tracker_input(running, cells.d_hidden), (h[rows], c[rows]))
            h, c = h.index_copy(0, rows, tracking), c.index_copy(0, rows, c_new)
        if head is not None:
            # Past a sentence's last step its scores are those of a zero state.
            state = h.new_zeros(h.shape)
            if tracking is not None:
                state = state.index_copy(0, rows, tracking)
            logits.append(step_logits := head(state))
        if transitions is None and running:
            scores = step_logits[running].detach().float().cpu().numpy()  # the step's one host read
            followed[running, t] = best_allowed(scores, *machine.allowed(running))
        else:
            followed[running, t] = [transitions[b][t] for b in running]
        machine.apply(followed[running, t].tolist(), running, tracking, cells.reduce)
    return MachineOutput(
        h=machine.roots()[:, : cells.d_hidden],
        transition_logits=torch.stack(logits, dim=1) if logits else None,
        transitions=torch.from_numpy(followed).to(leaves.device),
    )


def _top(ids: list[int], k: int) -> int:
    """The k-th id from the top of a stack or buffer, or EMPTY."""
    return ids[-k] if len(ids) >= k else EMPTY
