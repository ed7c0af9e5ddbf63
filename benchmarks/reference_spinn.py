"""A seed-style SPINN: the design of the 2017 PyTorch SPINN example (pytorch/examples, ``snli/spinn.py``).

One Python list stack and one list buffer per sentence, a Python loop over the batch at every step,
and the Reduce batched over the sentences that reduce at that step (their children concatenated from
the lists and the results split back into them). The Tracker is an `nn.LSTMCell` over the whole batch;
Reduce has separate ``left``, ``right`` and ``track`` layers and the example's gate order (a, i, f1,
f2, o). The full SPINN following its own predictions reads them back to the host at every step.

It is the baseline of ``benchmarks/bench_model.py`` and a correctness cross-check: `load_from_classifier`
copies the weights of a `spinn.model.NLIClassifier` into a `ReferenceClassifier`, whose outputs then
equal the classifier's to 1e-5. Premises and hypotheses are encoded together as 2B sentences, as the
classifier does, so both implementations see the same batches.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinn.data.batching import NLIBatch, pair_sentences
from spinn.model import NLIClassifier
from spinn.transitions import PAD, REDUCE, SHIFT

Node = tuple[Tensor, Tensor]  # (h, c), each (1, D)


class ReferenceReduce(nn.Module):
    """TreeLSTM composition over lists of stack items, as in the 2017 example."""

    def __init__(self, d_hidden: int, d_tracker: int | None) -> None:
        super().__init__()
        self.left = nn.Linear(d_hidden, 5 * d_hidden)
        self.right = nn.Linear(d_hidden, 5 * d_hidden, bias=False)
        self.track = nn.Linear(d_tracker, 5 * d_hidden, bias=False) if d_tracker else None

    def forward(self, left: list[Node], right: list[Node], tracking: list[Tensor] | None) -> list[Node]:
        h_left, c_left = (torch.cat(x) for x in zip(*left, strict=True))
        h_right, c_right = (torch.cat(x) for x in zip(*right, strict=True))
        lstm_in = self.left(h_left) + self.right(h_right)
        if tracking is not None:
            lstm_in = lstm_in + self.track(torch.cat(tracking))
        a, i, f1, f2, o = lstm_in.chunk(5, 1)
        c = a.tanh() * i.sigmoid() + f1.sigmoid() * c_left + f2.sigmoid() * c_right
        h = o.sigmoid() * c.tanh()
        return list(zip(h.split(1), c.split(1), strict=True))


class ReferenceTracker(nn.Module):
    """An `nn.LSTMCell` over [buffer top; stack top; second] (their h), one call for the whole batch."""

    def __init__(self, d_hidden: int, d_tracker: int, predict: bool) -> None:
        super().__init__()
        self.rnn = nn.LSTMCell(3 * d_hidden, d_tracker)
        self.transition = nn.Linear(d_tracker, 2) if predict else None

    def forward(
        self, buffers: list[list[Node]], stacks: list[list[Node]], state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        buf = torch.cat([b[-1][0] for b in buffers])
        top = torch.cat([s[-1][0] for s in stacks])
        second = torch.cat([s[-2][0] for s in stacks])
        return self.rnn(torch.cat((buf, top, second), 1), state)


class ReferenceSPINN(nn.Module):
    """The seed-style encoder. Each stack starts with two zero items and each buffer with one zero
    item below the words, so that absent items read as zeros (as in `spinn.model.SPINN`)."""

    def __init__(self, d_input: int, d_hidden: int, d_tracker: int | None, predict: bool) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.leaf = nn.Linear(d_input, 2 * d_hidden)
        self.tracker = ReferenceTracker(d_hidden, d_tracker, predict) if d_tracker else None
        self.reduce = ReferenceReduce(d_hidden, d_tracker)

    def forward(
        self, words: Tensor, transitions: Tensor, lengths: Tensor, follow_predictions: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """words (B, N, d_input) -> root h (B, D), logits (B, T, 2) or None, predictions (B, T) or None."""
        d = self.d_hidden
        leaves = self.leaf(words)  # (B, N, 2 D)
        lengths_list = lengths.tolist()
        given = transitions.tolist()
        zero = leaves.new_zeros(1, d)
        buffers = [
            [(zero, zero)] + [(row[:, :d], row[:, d:]) for row in leaves[b, :n].split(1)][::-1]
            for b, n in enumerate(lengths_list)
        ]
        stacks = [[(zero, zero), (zero, zero)] for _ in lengths_list]
        state, logits, actions = None, [], []
        for t in range(transitions.shape[1]):
            tracking = None
            if self.tracker is not None:
                state = self.tracker(buffers, stacks, state)
                tracking = state[0].split(1)
                if self.tracker.transition is not None:
                    logits.append(self.tracker.transition(state[0]))
            if follow_predictions:
                step = self._predict(logits[-1], buffers, stacks, lengths_list, t)
                actions.append(step)
            else:
                step = [row[t] for row in given]
            lefts, rights, tracks, who = [], [], [], []
            for b, action in enumerate(step):
                if action == SHIFT:
                    stacks[b].append(buffers[b].pop())
                elif action == REDUCE:
                    right, left = stacks[b].pop(), stacks[b].pop()
                    lefts.append(left)
                    rights.append(right)
                    who.append(b)
                    if tracking is not None:
                        tracks.append(tracking[b])
            if who:
                reduced = self.reduce(lefts, rights, tracks if tracking is not None else None)
                for b, node in zip(who, reduced, strict=True):
                    stacks[b].append(node)
        h = torch.cat([s[-1][0] for s in stacks])
        if not logits:
            return h, None, None
        predicted = torch.tensor(actions, dtype=torch.long).t() if follow_predictions else None
        return h, torch.stack(logits, 1), predicted

    @staticmethod
    def _predict(
        logits: Tensor, buffers: list[list[Node]], stacks: list[list[Node]], lengths: list[int], t: int
    ) -> list[int]:
        """The best valid transition per sentence, read back to the host (PAD after the last step)."""
        allowed = torch.tensor(
            [[len(b) > 1, len(s) > 3] for b, s in zip(buffers, stacks, strict=True)], device=logits.device
        )
        best = logits.detach().masked_fill(~allowed, float("-inf")).argmax(1).tolist()
        return [a if t < 2 * n - 1 else int(PAD) for a, n in zip(best, lengths, strict=True)]


class ReferenceClassifier(nn.Module):
    """The NLI model around `ReferenceSPINN`; layer sizes copied from an `NLIClassifier`."""

    def __init__(self, model: NLIClassifier) -> None:
        super().__init__()
        enc = model.encoder
        d_tracker = None if enc.tracker is None else enc.tracker.d_tracker
        self.eval_given_transitions = model.eval_given_transitions
        self.transition_loss_weight = model.transition_loss_weight
        self.embed = nn.Embedding(*model.embed.weight.shape, padding_idx=0)
        self.embed.weight.requires_grad_(model.embed.weight.requires_grad)
        self.embed_dropout = nn.Dropout(model.embed_dropout.p)
        self.encoder = ReferenceSPINN(enc.d_input, enc.d_hidden, d_tracker, enc.transition_head is not None)
        # torch's own dropout, as in the example (ours draws its CPU masks more cheaply).
        self.mlp = nn.Sequential(
            *(nn.Dropout(m.p) if isinstance(m, nn.Dropout) else copy.deepcopy(m) for m in model.mlp)
        )

    def forward(self, batch: NLIBatch) -> tuple[Tensor, Tensor | None]:
        """-> logits (B, 3), and the full SPINN's weighted transition loss (given parses) or None."""
        pairs = pair_sentences(batch)
        words = self.embed_dropout(self.embed(pairs.tokens))
        predicts = self.encoder.tracker is not None and self.encoder.tracker.transition is not None
        follow = predicts and not (self.training or self.eval_given_transitions)
        h, logits, _ = self.encoder(words, pairs.transitions, pairs.lengths, follow)
        n = len(batch.labels)
        p, q = h[:n], h[n:]
        out = self.mlp(torch.cat((p, q, p - q, p * q), 1))
        if logits is None:
            return out, None
        real = pairs.transitions != PAD
        return out, self.transition_loss_weight * F.cross_entropy(logits[real], pairs.transitions[real])

    def loss(self, output: tuple[Tensor, Tensor | None], labels: Tensor) -> Tensor:
        logits, transition = output
        loss = F.cross_entropy(logits, labels)
        return loss if transition is None else loss + transition


def load_from_classifier(ref: ReferenceClassifier, model: NLIClassifier) -> None:
    """Copy the weights of ``model`` into ``ref`` (built from the same ``model``)."""
    state = model.state_dict()
    d = model.encoder.d_hidden
    w, b = state["encoder.reduce.gates.weight"], state["encoder.reduce.gates.bias"]
    # Ours: (i, f_left, f_right, o, g); the example's: (a = g, i, f1, f2, o).
    order = torch.cat([torch.arange(k * d, (k + 1) * d) for k in (4, 0, 1, 2, 3)])
    w, b = w[order], b[order]
    mine = {
        "embed.weight": state["embed.weight"],
        "encoder.leaf.weight": state["encoder.leaf.weight"],
        "encoder.leaf.bias": state["encoder.leaf.bias"],
        "encoder.reduce.left.weight": w[:, :d],
        "encoder.reduce.left.bias": b,
        "encoder.reduce.right.weight": w[:, d : 2 * d],
    }
    if ref.encoder.tracker is not None:
        mine["encoder.reduce.track.weight"] = w[:, 2 * d :]
        wt, bt = state["encoder.tracker.gates.weight"], state["encoder.tracker.gates.bias"]
        # nn.LSTMCell's gate order (i, f, g, o) is the Tracker's.
        mine["encoder.tracker.rnn.weight_ih"] = wt[:, : 3 * d]
        mine["encoder.tracker.rnn.weight_hh"] = wt[:, 3 * d :]
        mine["encoder.tracker.rnn.bias_ih"] = bt
        mine["encoder.tracker.rnn.bias_hh"] = torch.zeros_like(bt)
        if ref.encoder.tracker.transition is not None:
            mine["encoder.tracker.transition.weight"] = state["encoder.transition_head.weight"]
            mine["encoder.tracker.transition.bias"] = state["encoder.transition_head.bias"]
    mine |= {k: v for k, v in state.items() if k.startswith("mlp.")}
    ref.load_state_dict(mine)


def reference_for(model: NLIClassifier) -> ReferenceClassifier:
    """A `ReferenceClassifier` with ``model``'s weights, in ``model``'s train/eval mode."""
    ref = ReferenceClassifier(model)
    load_from_classifier(ref, model)
    return ref.train(model.training)
