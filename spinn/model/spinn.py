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
* **Predicted transitions** (full SPINN at evaluation): the ids advance step by step on the host
  (`_StackPointers`, numpy), which reads each step's transition scores back once to pick the
  transitions and the REDUCEs, and sends each step's indices back in two copies (the Tracker's
  reads, then the REDUCEs').
  When no gradient is needed (``torch.no_grad``, or nothing requires one) the loop runs outside
  autograd with the kernels of `spinn.model.fused`: h and c stores written in place, the buffer
  top's share of the Tracker's gates computed for all leaves before the loop, the Tracker only on
  the sentences still running. Otherwise it runs through the `Tracker` and `Reduce` modules, the
  store written in place outside autograd by `_Write` and `_Read`, whose backward moves gradients
  through a gradient store of the same shape (autograd through in-place writes to one tensor would
  copy the whole buffer's gradient at every step: quadratic in length). A chain of scalar "tokens"
  from each write to the next read and write orders the backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinn.errors import SpinnError
from spinn.model.fused import _batch_tables, _Cells, _needs_grad, _scratch, _split, encode_given
from spinn.model.schedule import (
    _REDUCE,
    _SHIFT,
    Schedule,
    _longest_first,
    _running,
    _StackPointers,
    as_long_tensor,
    build_schedule,
    real_words,
    store_rows,
)
from spinn.transitions import PAD, REDUCE, SHIFT

Array = TypeVar("Array", Tensor, np.ndarray)


@dataclass
class SPINNOutput:
    """What `SPINN.forward` returns.

    Attributes:
        h: (B, d_hidden) the sentence vectors (h of each tree's root).
        transition_logits: (B, T, 2) SHIFT/REDUCE scores of the Tracker at each step (full SPINN only);
            the scores past a sentence's last step are those of a zero state.
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
        # that the cells of deep words reach the root early in training: +0.6 points of dev accuracy
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
    """The SPINN sentence encoder over a batch of word vectors (padded or packed) and transitions.

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
        SpinnError: predict_transitions without a Tracker, or a size below 1.
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
        for name, size in (("d_input", d_input), ("d_hidden", d_hidden), ("d_tracker", d_tracker)):
            if size is not None and size < 1:
                raise SpinnError(f"{name}: expected a size >= 1 (d_tracker None: no Tracker), found {size}")
        self.d_input = d_input
        self.d_hidden = d_hidden
        self.leaf = nn.Linear(d_input, 2 * d_hidden)
        self.tracker: Tracker | None = Tracker(d_hidden, d_tracker) if d_tracker is not None else None
        self.reduce = Reduce(d_hidden, d_tracker)
        self.transition_head: nn.Linear | None = nn.Linear(d_tracker, 2) if predict_transitions else None

    def forward(
        self,
        words: Tensor,
        transitions: Tensor | Sequence[Sequence[int]] | None,
        lengths: Tensor | Sequence[int],
        *,
        use_given_transitions: bool | None = None,
        schedule: Schedule | None = None,
    ) -> SPINNOutput:
        """Encode a batch of sentences.

        Args:
            words: (B, N, d_input) float, word vectors right-padded (padding rows are never read); or
                (W, d_input), the real words only, sentence after sentence (``lengths[b]`` rows for
                sentence b, W = ``lengths.sum()``): the rows a padded batch would be read at, so that
                padding is never embedded or dropped out (`NLIClassifier` passes these).
            transitions: (B, 2N - 1) long, SHIFT (0) / REDUCE (1), right-padded with PAD (2); sentence b
                uses its first 2 lengths[b] - 1 (a list of B equal-length lists is taken too). May be
                None only when a full SPINN follows its own predictions.
            lengths: (B,) long, words per sentence, 1..N, or a list of B ints.
            use_given_transitions: full SPINN only: whether the given transitions drive the stack
                (True) or the predicted ones (False). None means given in training mode, predicted in
                eval mode. The other variants always follow the given transitions.
            schedule: `build_schedule(transitions, lengths)`, precomputed (for example in a collate
                function) to spare the host work; built here when None. A schedule built from other
                transitions or lengths is refused.

        Returns:
            `SPINNOutput`; the transition fields are None without ``predict_transitions``.

        Raises:
            SpinnError: shapes that do not match each other or the model, lengths or transitions that
                are not integers, a schedule built from other transitions or lengths, or (when the
                model parses) lengths outside 1..N.
            ParseError: transitions that do not build one tree per sentence.
        """
        if not isinstance(words, Tensor):
            raise SpinnError(f"words: expected a float tensor of word vectors, found {type(words).__name__}")
        lengths = as_long_tensor(lengths, "lengths", words.device)
        if transitions is not None:
            transitions = as_long_tensor(transitions, "transitions", words.device)
        batch, n_words = self._check_inputs(words, transitions, lengths)
        if self.transition_head is not None:
            given = self.training if use_given_transitions is None else use_given_transitions
            if not given:
                return self._follow_predictions(words, transitions, lengths, n_words)
        if transitions is None:
            raise SpinnError("transitions is None: only a full SPINN following its predictions can parse")
        if schedule is None:
            schedule = build_schedule(transitions, lengths).to(words.device)
        else:
            schedule.check_fits(batch, n_words)
            schedule.check_matches(transitions, lengths)
        tracker = self.tracker
        # Only the real words are projected: padding is about a quarter of a bucketed NLI batch, whose
        # hypotheses are shorter than its premises.
        leaves = self.leaf(_real(words, schedule.leaf_rows))
        h, tracker_h = encode_given(
            leaves,
            self.reduce.gates.weight,
            self.reduce.gates.bias,
            None if tracker is None else tracker.gates.weight,
            None if tracker is None else tracker.gates.bias,
            schedule,
            tracker_states=self.transition_head is not None,
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
        """(B, N): the batch size and the width N the transitions are padded to, 2 N - 1 (without
        transitions: that of the padded words, or for packed words the longest sentence's)."""
        if words.dim() not in (2, 3) or words.shape[-1] != self.d_input:
            raise SpinnError(
                f"words have shape {tuple(words.shape)}, expected (batch, words, {self.d_input}) or "
                f"(real words, {self.d_input})"
            )
        packed = words.dim() == 2
        if lengths.dim() != 1 or (not packed and len(lengths) != len(words)):
            expected = "(batch,)" if packed else f"({len(words)},)"
            raise SpinnError(f"lengths have shape {tuple(lengths.shape)}, expected {expected}")
        if not len(lengths):
            raise SpinnError("lengths is empty: a batch needs at least one sentence")
        batch = len(lengths)
        if transitions is None:
            return batch, int(lengths.max()) if packed else words.shape[1]
        n_words = (transitions.shape[-1] + 1) // 2 if packed else words.shape[1]
        if transitions.shape != (batch, 2 * n_words - 1):
            expected = (
                f"({batch}, 2 N - 1), N the longest length" if packed else f"({batch}, {2 * n_words - 1})"
            )
            raise SpinnError(
                f"transitions have shape {tuple(transitions.shape)}, expected {expected}, "
                f"for words of shape {tuple(words.shape)}"
            )
        return batch, n_words

    def _tracker_input(self, store: _NodeStore, ids: Tensor, batch: int) -> Tensor:
        """(B, 3 D): h of the buffer top, stack top and second item, from ids (B * 3,)."""
        return store.read(ids).view(batch, 3, 2 * self.d_hidden)[:, :, : self.d_hidden].reshape(batch, -1)

    @torch.compiler.disable  # a host round trip every step: nothing for torch.compile to capture
    def _follow_predictions(
        self, words: Tensor, transitions: Tensor | None, lengths: Tensor, n_words: int
    ) -> SPINNOutput:
        """Full SPINN at evaluation: the best valid predicted transition drives each step."""
        # The given route's schedule checks the lengths; here they are read on the host anyway.
        host = lengths.cpu()
        wrong = (host < 1) | (host > n_words)
        if wrong.any():
            b = int(wrong.nonzero()[0, 0])
            raise SpinnError(f"sentence {b} of the batch has length {int(host[b])}, expected 1..{n_words}")
        # As in `encode_given`: outside autograd when nothing needs a gradient.
        if _needs_grad(words, *self.parameters()):
            logits, actions, h = self._follow_predictions_autograd(words, lengths, n_words)
        else:
            logits, actions, h = self._follow_predictions_no_grad(words, lengths, n_words)
        return SPINNOutput(
            h=h,
            transition_logits=logits,
            transition_loss=None if transitions is None else transition_loss(logits, transitions),
            predicted_transitions=actions,
        )

    def _follow_predictions_autograd(
        self, words: Tensor, lengths: Tensor, n_words: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, 2) logits, (B, T) transitions and (B, D) root h through the generic modules, recorded
        by autograd (the node store passes gradients by hand)."""
        batch = len(lengths)
        leaf_rows = real_words(lengths, n_words)[0]
        leaves = self.leaf(_real(words, leaf_rows))  # (W, 2 D)
        store = _NodeStore(store_rows(batch, n_words), leaves)
        device = leaves.device
        store.write(1 + leaf_rows, leaves)
        pointers = _StackPointers(lengths.cpu().numpy(), n_words)
        state = (leaves.new_zeros(batch, self.tracker.d_tracker),) * 2
        last_step = 2 * pointers.lengths - 1
        logits, actions = [], []
        for t in range(2 * n_words - 1):
            ids = pointers.tracker_ids()  # (B, 3) buffer top, stack top, second
            reads = torch.from_numpy(ids).to(device).view(-1)
            state = self.tracker(self._tracker_input(store, reads, batch), state)
            logits.append(self.transition_head(state[0]))
            # The step's one host read: the scores, to pick the transitions and the REDUCEs.
            scores = logits[-1].detach().float().cpu().numpy()
            action = _best_allowed(scores, pointers.can_shift(), pointers.can_reduce())
            action = np.where(t < last_step, action, int(PAD))
            actions.append(action)
            target = pointers.advance(action)
            rows = np.flatnonzero(action == _REDUCE)
            if len(rows):
                # The children as [left; right]: the second item, then the stack top.
                children = store.read(torch.from_numpy(ids[rows][:, [2, 1]].reshape(-1)).to(device))
                tracking = state[0].index_select(0, torch.from_numpy(rows).to(device))
                composed = self.reduce(*children.view(len(rows), 2, -1).unbind(1), tracking)
                store.write(torch.from_numpy(target[rows]).to(device), composed)
        actions = torch.from_numpy(np.stack(actions, 1)).to(device)
        # Past its last step a sentence scores as a zero state, as with given transitions.
        logits = torch.where(
            (actions == PAD)[..., None],
            self.transition_head.bias.to(logits[0].dtype),
            torch.stack(logits, dim=1),
        )
        return logits, actions, store.read(torch.from_numpy(pointers.root()).to(device))[:, : self.d_hidden]

    def _follow_predictions_no_grad(
        self, words: Tensor, lengths: Tensor, n_words: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What `_follow_predictions_autograd` returns, computed outside autograd as in
        `spinn.model.fused`: h and c in separate stores written in place, one step's rows of the
        buffers kept between calls, the buffer top's share of the Tracker's gates for every real word in
        one matmul before the loop, the cells of `spinn.model.fused._Cells`, and the Tracker only on the
        sentences not yet finished: sorted longest first, those are a prefix of the batch (the leaf
        rows of the stores follow that order). Only the real words are projected to leaves."""
        d, dt = self.d_hidden, self.tracker.d_tracker
        batch = len(lengths)
        n_steps = 2 * n_words - 1
        device = words.device
        lengths = lengths.to(device)
        order, rank = _longest_first(lengths)
        # The host read outside the loop: how many sentences still run at each step (non-increasing;
        # the steps past the longest sentence are dropped).
        active = [k for k in _running(lengths, n_steps).tolist() if k]
        # The real words, in sentence order (as given, if packed), projected to leaves. Word i of
        # sentence b is node 1 + rank[b] N + i: the stores' leaf rows follow the longest-first order.
        leaf_rows = real_words(lengths, n_words)[0]
        leaves = self.leaf(_real(words, leaf_rows)).detach()  # (W, 2 D)
        leaf_ids = 1 + rank.index_select(0, leaf_rows // n_words) * n_words + leaf_rows % n_words
        # Row 1 + j of buffer_gates is for the j-th real word; buffer_row maps a leaf's node id to it.
        buffer_row = leaves.new_zeros(1 + batch * n_words, dtype=torch.long)
        buffer_row[leaf_ids] = torch.arange(1, 1 + len(leaf_ids), device=device)
        dtype = leaves.dtype  # bf16 under autocast: one dtype throughout, as in `encode_given`
        w_t, b_t, w_r, b_r, w_p, b_p = (
            p.detach().to(dtype)
            for p in (
                *self.tracker.gates.parameters(),
                *self.reduce.gates.parameters(),
                *self.transition_head.parameters(),
            )
        )
        with torch.autocast(leaves.device.type, enabled=False):
            cells = _Cells(w_r, b_r, w_t, b_t)
            # The batch's tables from the kept workspace, as in `encode_given` without a gradient.
            tables = _batch_tables(cells, leaves, leaf_ids, store_rows(batch, n_words), fresh=False)
            h_store, c_store, buffer_gates = (tables[k] for k in ("h_store", "c_store", "buffer_gates"))
            # One step's rows of the loop's buffers, and their views for each row count, kept between
            # calls (`spinn.model.fused._Scratch`): slicing costs about a microsecond a view, as much
            # as some of the kernels. h0, c0 and h1, c1: the Tracker's state before a step and after it
            # (parities alternate); the state before the first step is zero.
            pool = _scratch.pool(("parse", d, dt, dtype, device), batch)
            widths = dict(h0=dt, c0=dt, h1=dt, c1=dt, x_t=2 * d, z_t=4 * dt, tanh_t=dt)
            widths |= dict(x_r=2 * d, z_r=5 * d, c_r=d, h_r=d, e_r=dt, tanh_r=d)
            buf = SimpleNamespace(**{name: pool.tensor(name, leaves, n) for name, n in widths.items()})
            buf.cc_r = pool.tensor("cc_r", leaves, 2, d)  # the children's c
            buf.h0[:batch] = 0
            buf.c0[:batch] = 0

            def tracker_rows(k: int, parity: int) -> SimpleNamespace:
                def make() -> SimpleNamespace:
                    h, c = (buf.h0, buf.c0) if parity == 0 else (buf.h1, buf.c1)
                    x, z = buf.x_t[:k], buf.z_t[:k]
                    return SimpleNamespace(
                        x=x, stack=x.view(2 * k, d), z=z, gates=_split(z, 4), h=h[:k], c=c[:k],
                        tanh_c=buf.tanh_t[:k],
                    )  # fmt: skip

                return pool.cached(("tracker", k, parity), make)

            def reduce_rows(m: int) -> SimpleNamespace:
                def make() -> SimpleNamespace:
                    x, z, cc = buf.x_r[:m], buf.z_r[:m], buf.cc_r[:m]
                    return SimpleNamespace(
                        x=x, children_h=x.view(2 * m, d), z=z, gates=_split(z, 5), tracking=buf.e_r[:m],
                        children_c=cc.view(2 * m, d), c_left=cc[:, 0], c_right=cc[:, 1],
                        c=buf.c_r[:m], h=buf.h_r[:m], tanh_c=buf.tanh_r[:m],
                    )  # fmt: skip

                return pool.cached(("reduce", m), make)

            logits = b_p.expand(n_steps, batch, 2).clone()  # a zero state's scores past the last step
            step_logits = logits.unbind(0)
            actions = np.full((n_steps, batch), int(PAD))
            pointers = _StackPointers(lengths[order].cpu().numpy(), n_words)
            buffer_row = buffer_row.cpu().numpy()
            for t, k in enumerate(active):
                tr, new = tracker_rows(k, t % 2), tracker_rows(k, 1 - t % 2)
                ids = pointers.tracker_ids()[:k]  # buffer top, stack top, second
                # The Tracker's indices in one host-to-device copy: the buffer tops' rows of
                # buffer_gates, then the stack tops' ids.
                reads = np.concatenate((buffer_row[ids[:, 0]], ids[:, 1:].reshape(-1)))
                buffer_top, stack = torch.from_numpy(reads).to(device).split_with_sizes((k, 2 * k))
                torch.index_select(buffer_gates, 0, buffer_top, out=tr.z)
                torch.index_select(h_store, 0, stack, out=tr.stack)
                tr.z.addmm_(tr.x, cells.tracker_stack).addmm_(tr.h, cells.tracker_hidden)
                cells.tracker(tr.z, tr.gates, tr.c, new.c, new.h, tr.tanh_c)
                scores = torch.addmm(b_p, new.h, w_p.t(), out=step_logits[t][:k])
                # The step's one host read: the scores, to pick the transitions and the REDUCEs.
                can = (pointers.can_shift()[:k], pointers.can_reduce()[:k])
                action = actions[t, :k] = _best_allowed(scores.float().cpu().numpy(), *can)
                target = pointers.advance(actions[t])
                reducing = np.flatnonzero(action == _REDUCE)
                m = len(reducing)
                if not m:
                    continue
                # The children as [left; right] (the second item, then the stack top), the REDUCEs'
                # rows and the rows their results go to.
                rows = np.concatenate((ids[reducing][:, [2, 1]].reshape(-1), reducing, target[reducing]))
                children, reducers, out = torch.from_numpy(rows).to(device).split_with_sizes((2 * m, m, m))
                r = reduce_rows(m)
                torch.index_select(h_store, 0, children, out=r.children_h)
                torch.addmm(cells.reduce_bias, r.x, cells.reduce_children, out=r.z)
                r.z.addmm_(torch.index_select(new.h, 0, reducers, out=r.tracking), cells.reduce_tracker)
                torch.index_select(c_store, 0, children, out=r.children_c)
                cells.reduce(r.z, r.gates, r.c_left, r.c_right, r.c, r.h, r.tanh_c)
                c_store.index_copy_(0, out, r.c)
                h_store.index_copy_(0, out, r.h)
            h = h_store.index_select(0, torch.from_numpy(pointers.root()).to(device).index_select(0, rank))
        actions = torch.from_numpy(actions).to(device)
        return logits.transpose(0, 1).index_select(0, rank), actions.t().index_select(0, rank), h


def _real(words: Tensor, leaf_rows: Tensor) -> Tensor:
    """(W, d_input) the real words, sentence-major: ``words`` if they are already packed, else their
    rows ``leaf_rows``."""
    if words.dim() == 3:
        return words.reshape(-1, words.shape[-1]).index_select(0, leaf_rows)
    if len(words) != len(leaf_rows):  # W is known on the host: no device sync
        raise SpinnError(
            f"words have {len(words)} rows, expected one per real word: {len(leaf_rows)} (the sum of lengths)"
        )
    return words


def transition_loss(logits: Tensor, transitions: Tensor) -> Tensor:
    """Mean cross-entropy of (B, T, 2) logits against (B, T) transitions over the non-PAD steps."""
    real = (transitions != PAD).flatten()
    # A weighted mean rather than boolean indexing, whose output size would need a device sync.
    losses = F.cross_entropy(
        logits.flatten(0, 1), transitions.clamp(max=int(REDUCE)).flatten(), reduction="none"
    )
    return (losses * real).sum() / real.sum()


def _best_allowed(logits: Array, can_shift: Array, can_reduce: Array) -> Array:
    """From (..., 2) SHIFT/REDUCE logits, the higher-scoring transition among those allowed (SHIFT
    needs a word in the buffer, REDUCE two items on the stack; a tie goes to SHIFT). On tensors or on
    numpy arrays (the host-side steps of a full SPINN following its predictions)."""
    xp = np if isinstance(logits, np.ndarray) else torch
    return xp.where(can_reduce & (~can_shift | (logits[..., 1] > logits[..., 0])), _REDUCE, _SHIFT)


def _best_valid(logits: Tensor, transitions: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) the best valid transition at each step given the stack the given transitions built."""
    real = transitions != PAD
    shifts_before = F.pad((transitions == SHIFT).long().cumsum(1)[:, :-1], (1, 0))
    depth_before = F.pad(
        ((transitions == SHIFT).long() - (transitions == REDUCE).long()).cumsum(1)[:, :-1], (1, 0)
    )
    best = _best_allowed(logits, shifts_before < lengths[:, None], depth_before >= 2)
    return torch.where(real, best, PAD)
