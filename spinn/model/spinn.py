"""The SPINN encoder (Bowman et al. 2016): a Tracker LSTM and a TreeLSTM Reduce over a batched stack.

How the batched stack is stored
-------------------------------
* **Node store**: one row per node of every tree in the batch holding its h and c -- row 0 is zeros
  (an empty slot), then one leaf row per word, one row per REDUCE result and a scratch row (layout in
  `spinn.model.schedule`). Each row is written once.
* **Stacks and buffers** hold node *ids*, never vectors. SHIFT pushes a leaf's id; REDUCE reads the
  rows of the top two ids, composes them and writes the result to a fresh row whose id replaces them.
* **Given transitions** (training, SPINN-PI, SPINN-PI-NT): every id is known in advance
  (`build_schedule`, which a collate function can run), and the whole loop is one autograd Function
  with a hand-written backward (`spinn.model.fused`): no autograd bookkeeping per step, weight
  gradients in one matmul over all steps, no host round trip. Without a Tracker nothing depends on
  the order of REDUCEs, so all nodes of one tree level are composed in one call (tree height steps);
  with a Tracker the loop runs over the 2N - 1 steps, each on the sentences not yet finished.
* **Predicted transitions** (full SPINN at evaluation): the ids advance on the device step by step
  (`_StackPointers`); the store is written in place outside autograd by `_Write` and `_Read`, whose
  backward moves gradients through a gradient store of the same shape (autograd through in-place
  writes to one tensor would copy the whole buffer's gradient at every step: quadratic in length).
  A chain of scalar "tokens" from each write to the next read and write orders the backward.
  Where autograd records nothing (evaluation under ``torch.no_grad``) the store is indexed directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinn.errors import SpinnError
from spinn.model.fused import encode_given
from spinn.model.schedule import Schedule, _StackPointers, build_schedule, store_rows
from spinn.transitions import PAD, REDUCE, SHIFT


@dataclass
class SPINNOutput:
    """What `SPINN.forward` returns.

    Attributes:
        h: (B, d_hidden) the sentence vectors (h of each tree's root).
        transition_logits: (B, T, 2) SHIFT/REDUCE scores of the Tracker at each step (full SPINN only);
            with given transitions the scores past a sentence's last step are those of a zero state.
        transition_loss: scalar mean cross-entropy of those scores against the given transitions over
            the real (non-PAD) steps (full SPINN, when transitions are given).
        predicted_transitions: (B, T) long, the best valid transition at each step, PAD after a
            sentence's last step (full SPINN only).
    """

    h: Tensor
    transition_logits: Tensor | None = None
    transition_loss: Tensor | None = None
    predicted_transitions: Tensor | None = None


class _Rows:
    """The node rows and their gradients; what the autograd Functions below keep."""

    def __init__(self, data: Tensor) -> None:
        self.data = data
        self.grad: Tensor | None = None


class _NodeStore:
    """Node rows written once, in place, with gradients passed by hand (see the module docstring).

    The token lives here and not in `_Rows`: the autograd graph holds the `_Rows`, and a reference
    back from them to the graph would be a cycle that keeps every batch's graph alive.
    """

    def __init__(self, n_rows: int, like: Tensor) -> None:
        self.rows = _Rows(like.new_zeros(n_rows, like.shape[-1]))
        self.token = like.new_zeros(())

    def write(self, rows: Tensor, x: Tensor) -> None:
        if _needs_grad(x):
            self.token = _Write.apply(self.token, x, rows, self.rows)
        else:
            self.rows.data.index_copy_(0, rows, x.to(self.rows.data.dtype))

    def read(self, rows: Tensor) -> Tensor:
        if _needs_grad(self.token):
            return _Read.apply(self.token, rows, self.rows)
        return self.rows.data.index_select(0, rows)


def _needs_grad(x: Tensor) -> bool:
    """Whether autograd records an op on x: without it (evaluation) the store skips the Functions."""
    return torch.is_grad_enabled() and x.requires_grad


class _Write(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token: Tensor, x: Tensor, rows: Tensor, store: _Rows) -> Tensor:
        store.data.index_copy_(0, rows, x.to(store.data.dtype))
        ctx.store = store
        ctx.x_shape = x.shape
        ctx.save_for_backward(rows)
        return token.new_zeros(())

    @staticmethod
    def backward(ctx, g_token: Tensor) -> tuple[Tensor, Tensor, None, None]:
        (rows,) = ctx.saved_tensors
        store = ctx.store
        if store.grad is None:
            return g_token, g_token.new_zeros(ctx.x_shape), None, None
        g_x = store.grad.index_select(0, rows)
        # Leaves the gradient store clean for another backward through the same graph.
        store.grad.index_fill_(0, rows, 0)
        return g_token, g_x, None, None


class _Read(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token: Tensor, rows: Tensor, store: _Rows) -> Tensor:
        ctx.store = store
        ctx.save_for_backward(rows)
        return store.data.index_select(0, rows)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        (rows,) = ctx.saved_tensors
        store = ctx.store
        if store.grad is None:
            store.grad = torch.zeros_like(store.data)
        store.grad.index_add_(0, rows, g.to(store.grad.dtype))
        # A real (zero) gradient for the token keeps the earlier writes' backward on the schedule.
        return g.new_zeros(()), None, None


class Tracker(nn.Module):
    """An LSTM cell over [buffer top; stack top; second item] (their h), all gates in one matmul.

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
        i, f, _, o = torch.sigmoid(z).chunk(4, dim=1)
        c = torch.addcmul(f * c, i, torch.tanh(z[:, 2 * self.d_tracker : 3 * self.d_tracker]))
        return o * torch.tanh(c), c


class Reduce(nn.Module):
    """TreeLSTM composition (Tai et al. 2015) with a forget gate per child, all gates in one matmul.

    gates = W [h_left; h_right; e] + b, split into input i, forget f_left, f_right, output o, and
    candidate g; c = f_left * c_left + f_right * c_right + i * g; h = o * tanh(c). e is the Tracker's
    h when there is a Tracker.

    Args:
        d_hidden: size of h and of c.
        d_tracker: size of the Tracker's h, or None without a Tracker.
    """

    def __init__(self, d_hidden: int, d_tracker: int | None = None) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.gates = nn.Linear(2 * d_hidden + (d_tracker or 0), 5 * d_hidden)
        # Forget gates start open (bias +1, sigmoid 0.73; Gers et al. 2000, Jozefowicz et al. 2015) so
        # that the cells of deep words reach the root early in training: +0.8 points of dev accuracy
        # on configs/small.yaml (README, Results).
        with torch.no_grad():
            self.gates.bias[d_hidden : 3 * d_hidden] += 1.0

    def forward(self, left: Tensor, right: Tensor, tracking: Tensor | None = None) -> Tensor:
        """left, right (M, 2 d_hidden) as [h; c], tracking (M, d_tracker) or None -> (M, 2 d_hidden)."""
        d = self.d_hidden
        x = (left[:, :d], right[:, :d]) if tracking is None else (left[:, :d], right[:, :d], tracking)
        z = self.gates(torch.cat(x, dim=1))
        i, f_left, f_right, o = torch.sigmoid(z[:, : 4 * d]).chunk(4, dim=1)
        c = torch.addcmul(
            torch.addcmul(i * torch.tanh(z[:, 4 * d :]), f_left, left[:, d:]), f_right, right[:, d:]
        )
        return torch.cat((o * torch.tanh(c), c), dim=1)


class SPINN(nn.Module):
    """The SPINN sentence encoder over a padded batch of word vectors and transitions.

    Variants (Bowman et al. 2016): ``d_tracker=None`` is SPINN-PI-NT (no Tracker, composed level by
    level); ``d_tracker=64`` is SPINN-PI; adding ``predict_transitions=True`` is the full SPINN, whose
    Tracker also scores SHIFT/REDUCE at every step.

    Turning parsed sentences into inputs: `spinn.parse_to_transitions` splits a binary parse into
    words and transitions, `spinn.pad_sentences` pads word ids and transitions into a `Sentences`
    batch; embed ``tokens`` to get ``words``.

    Args:
        d_input: size of the word vectors.
        d_hidden: size of each node's h and c; leaves are a learned projection of the word vectors.
        d_tracker: size of the Tracker LSTM, or None for no Tracker.
        predict_transitions: score transitions with a linear layer on the Tracker's state.

    Raises:
        SpinnError: predict_transitions without a Tracker.
    """

    def __init__(
        self,
        d_input: int,
        d_hidden: int = 300,
        d_tracker: int | None = None,
        predict_transitions: bool = False,
    ) -> None:
        super().__init__()
        if predict_transitions and d_tracker is None:
            raise SpinnError("predict_transitions=True needs a Tracker: set d_tracker (for example 64)")
        self.d_input = d_input
        self.d_hidden = d_hidden
        self.leaf = nn.Linear(d_input, 2 * d_hidden)
        self.tracker: Tracker | None = Tracker(d_hidden, d_tracker) if d_tracker is not None else None
        self.reduce = Reduce(d_hidden, d_tracker)
        self.transition_head: nn.Linear | None = nn.Linear(d_tracker, 2) if predict_transitions else None

    def forward(
        self,
        words: Tensor,
        transitions: Tensor | None,
        lengths: Tensor,
        *,
        use_given_transitions: bool | None = None,
        schedule: Schedule | None = None,
    ) -> SPINNOutput:
        """Encode a padded batch.

        Args:
            words: (B, N, d_input) float, word vectors right-padded (padding rows are never read).
            transitions: (B, 2N - 1) long, SHIFT (0) / REDUCE (1), right-padded with PAD (2); sentence b
                uses its first 2 lengths[b] - 1. May be None only when a full SPINN follows its own
                predictions.
            lengths: (B,) long, words per sentence, 1..N.
            use_given_transitions: full SPINN only: whether the given transitions drive the stack
                (True) or the predicted ones (False). None means given in training mode, predicted in
                eval mode. The other variants always follow the given transitions.
            schedule: `build_schedule(transitions, lengths)`, precomputed (for example in a collate
                function) to spare the host work; built here when None.

        Returns:
            `SPINNOutput`; the transition fields are None without ``predict_transitions``.

        Raises:
            SpinnError: shapes that do not match each other or the model.
            ParseError: transitions that do not build one tree per sentence.
        """
        batch, n_words = self._check_inputs(words, transitions, lengths)
        leaves = self.leaf(words).reshape(batch * n_words, 2 * self.d_hidden)  # (B N, 2 D)
        if self.transition_head is not None:
            given = self.training if use_given_transitions is None else use_given_transitions
            if not given:
                return self._follow_predictions(leaves, transitions, lengths, n_words)
        if transitions is None:
            raise SpinnError("transitions is None: only a full SPINN following its predictions can parse")
        if schedule is None:
            schedule = build_schedule(transitions, lengths).to(words.device)
        elif (schedule.batch_size, schedule.n_words) != (batch, n_words):
            raise SpinnError(
                f"the schedule is for {schedule.batch_size} sentences of {schedule.n_words} words, "
                f"the batch has {batch} of {n_words}"
            )
        tracker = self.tracker
        h, tracker_h = encode_given(
            leaves,
            self.reduce.gates.weight,
            self.reduce.gates.bias,
            None if tracker is None else tracker.gates.weight,
            None if tracker is None else tracker.gates.bias,
            schedule,
        )
        if self.transition_head is None:
            return SPINNOutput(h=h)
        logits = self.transition_head(tracker_h).transpose(0, 1)  # (B, T, 2)
        return SPINNOutput(
            h=h,
            transition_logits=logits,
            transition_loss=transition_loss(logits, transitions),
            predicted_transitions=_best_valid(logits, transitions, lengths),
        )

    def _check_inputs(self, words: Tensor, transitions: Tensor | None, lengths: Tensor) -> tuple[int, int]:
        if words.dim() != 3 or words.shape[2] != self.d_input:
            raise SpinnError(
                f"words have shape {tuple(words.shape)}, expected (batch, words, {self.d_input})"
            )
        batch, n_words = words.shape[:2]
        if lengths.shape != (batch,):
            raise SpinnError(f"lengths have shape {tuple(lengths.shape)}, expected ({batch},)")
        if transitions is not None and transitions.shape != (batch, 2 * n_words - 1):
            raise SpinnError(
                f"transitions have shape {tuple(transitions.shape)}, expected ({batch}, {2 * n_words - 1}) "
                f"for words of shape {tuple(words.shape)}"
            )
        return batch, n_words

    def _tracker_input(self, store: _NodeStore, ids: Tensor, batch: int) -> Tensor:
        """(B, 3 D): h of the buffer top, stack top and second item, from ids (B * 3,)."""
        return store.read(ids).view(batch, 3, 2 * self.d_hidden)[:, :, : self.d_hidden].reshape(batch, -1)

    def _follow_predictions(
        self, leaves: Tensor, transitions: Tensor | None, lengths: Tensor, n_words: int
    ) -> SPINNOutput:
        """Full SPINN at evaluation: the best valid predicted transition drives each step."""
        batch = lengths.shape[0]
        store = _NodeStore(store_rows(batch, n_words), leaves)
        store.write(torch.arange(1, 1 + batch * n_words, device=leaves.device), leaves)
        pointers = _StackPointers(lengths.to(leaves.device), n_words)
        state = (leaves.new_zeros(batch, self.tracker.d_tracker),) * 2
        last_step = 2 * pointers.lengths - 1
        logits, actions = [], []
        for t in range(2 * n_words - 1):
            ids = pointers.tracker_ids()  # (B, 3) buffer top, stack top, second
            state = self.tracker(self._tracker_input(store, ids.view(-1), batch), state)
            logits.append(self.transition_head(state[0]))
            action = _mask_invalid(logits[-1], pointers.can_shift(), pointers.can_reduce()).argmax(1)
            action = torch.where(t < last_step, action, PAD)
            actions.append(action)
            target = pointers.advance(action)
            # Compose only where a REDUCE was predicted. Reading the actions back to the host costs a
            # sync per step, but this path decides each step from the last one's output anyway.
            rows = (action == REDUCE).nonzero()[:, 0]
            m = len(rows)
            if m:
                # (M, 2, 2 D): the [h; c] of each REDUCE's right and left child.
                children = store.read(ids[:, 1:].index_select(0, rows).view(-1)).view(m, 2, -1)
                composed = self.reduce(children[:, 1], children[:, 0], state[0].index_select(0, rows))
                store.write(target.index_select(0, rows), composed)
        logits = torch.stack(logits, dim=1)
        return SPINNOutput(
            h=store.read(pointers.root())[:, : self.d_hidden],
            transition_logits=logits,
            transition_loss=None if transitions is None else transition_loss(logits, transitions),
            predicted_transitions=torch.stack(actions, dim=1),
        )


def transition_loss(logits: Tensor, transitions: Tensor) -> Tensor:
    """Mean cross-entropy of (B, T, 2) logits against (B, T) transitions over the non-PAD steps."""
    real = (transitions != PAD).flatten()
    # A weighted mean rather than boolean indexing, whose output size would need a device sync.
    losses = F.cross_entropy(
        logits.flatten(0, 1), transitions.clamp(max=int(REDUCE)).flatten(), reduction="none"
    )
    return (losses * real).sum() / real.sum()


def _mask_invalid(logits: Tensor, can_shift: Tensor, can_reduce: Tensor) -> Tensor:
    """Set the score of SHIFT with an empty buffer and of REDUCE with < 2 stack items to -inf."""
    allowed = torch.stack((can_shift, can_reduce), dim=-1)
    return logits.masked_fill(~allowed, float("-inf"))


def _best_valid(logits: Tensor, transitions: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) the best valid transition at each step given the stack the given transitions built."""
    real = transitions != PAD
    shifts_before = F.pad((transitions == SHIFT).long().cumsum(1)[:, :-1], (1, 0))
    depth_before = F.pad(
        ((transitions == SHIFT).long() - (transitions == REDUCE).long()).cumsum(1)[:, :-1], (1, 0)
    )
    masked = _mask_invalid(logits, shifts_before < lengths[:, None], depth_before >= 2)
    return torch.where(real, masked.argmax(-1), PAD)
