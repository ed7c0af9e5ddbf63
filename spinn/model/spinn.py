"""The SPINN encoder (Bowman et al. 2016): a Tracker LSTM and a TreeLSTM Reduce over a batched stack.

Two paths compute the same model:

* **the reference** (`spinn.model.reference`): the definition, one step at a time, calling the
  Tracker and the composition as modules, autograd doing the backward. It runs whenever the cells are
  not the stock ones (another class, a subclass, hooks) or ``use_engine`` is False, and for a full
  SPINN following its own predictions while gradients are recorded;
* **the engine** (`spinn.model.engine`), for the stock cells: with given transitions every node id is
  known in advance (`build_schedule`, which a collate function can run), and the whole loop is one
  autograd Function with a hand-written backward over node stores written in place; without a
  Tracker the nodes of one tree level are composed in one call. A full SPINN following its own
  predictions without a gradient (evaluation) runs the same kernels step by step, reading each
  step's transition scores back once to pick the transitions.

`SPINN.last_path` says which one the last call took (and the ``spinn.model`` logger says so at debug
level when it changes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinn.errors import SpinnError
from spinn.model.cells import Reduce, Tracker
from spinn.model.compositions import make_composition
from spinn.model.engine import StockWeights, encode_given, follow_predictions, needs_grad
from spinn.model.leaves import make_leaf
from spinn.model.reference import Cells, best_allowed, run_machine
from spinn.schedule import Schedule, as_long_tensor, build_schedule, real_words
from spinn.transitions import PAD, REDUCE, SHIFT

logger = logging.getLogger("spinn.model")


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
        d_hidden: size of each node's h (and c, for a TreeLSTM).
        d_tracker: size of the Tracker LSTM, or None for no Tracker.
        predict_transitions: score transitions with a linear layer on the Tracker's state.
        composition: how REDUCE combines two children: "treelstm" (the stock `Reduce`, the default),
            "treegru" or "tanh" (`spinn.model.COMPOSITIONS`), or a module of your own called as
            ``reduce(left, right, tracking)`` with a ``d_state`` attribute (`spinn.model.compositions`).
        leaf: what SHIFT puts on the stack: "projection" of each word (the default), "lstm", "gru" or
            "bilstm" over the sentence (`spinn.model.LEAVES`), or a module called as
            ``leaf(words, lengths)`` (`spinn.model.leaves`).

    Attributes:
        leaf, tracker, reduce, transition_head: the modules, which may be replaced (or subclassed) by
            any module with the same interface (`spinn.model.reference.Cells`): a call then runs
            them through the reference instead of the engine.
        use_engine: False always runs the reference (slower; the same results up to rounding).
        last_path: "engine" or "reference", the path the last call took (None before the first).

    Raises:
        SpinnError: predict_transitions without a Tracker, a size below 1, an unknown composition or
            leaf, or a composition module without ``d_state``.
    """

    def __init__(
        self,
        d_input: int,
        d_hidden: int = 300,
        d_tracker: int | None = None,
        predict_transitions: bool = False,
        *,
        composition: str | nn.Module = "treelstm",
        leaf: str | nn.Module = "projection",
    ) -> None:
        super().__init__()
        if predict_transitions and d_tracker is None:
            raise SpinnError("predict_transitions=True needs a Tracker: set d_tracker (for example 64)")
        for name, size in (("d_input", d_input), ("d_hidden", d_hidden), ("d_tracker", d_tracker)):
            if size is not None and size < 1:
                raise SpinnError(f"{name}: expected a size >= 1 (d_tracker None: no Tracker), found {size}")
        self.d_input = d_input
        self.d_hidden = d_hidden
        self.tracker: Tracker | None = Tracker(d_hidden, d_tracker) if d_tracker is not None else None
        self.reduce = make_composition(composition, d_hidden, d_tracker)
        self.leaf = make_leaf(leaf, d_input, self.reduce.d_state)
        self.transition_head: nn.Linear | None = nn.Linear(d_tracker, 2) if predict_transitions else None
        self.use_engine = True
        self.last_path: str | None = None

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
        transitions, lengths = _long_inputs(words, transitions, lengths)
        batch, n_words = self._check_inputs(words, transitions, lengths)
        follow = self.transition_head is not None and not (
            self.training if use_given_transitions is None else use_given_transitions
        )
        if follow:
            schedule = None
            leaf_rows = real_words(_checked_lengths(lengths, n_words), n_words)[0]
        else:
            schedule = _given_schedule(schedule, transitions, lengths, batch, n_words, words.device)
            leaf_rows = schedule.leaf_rows
        # Only the real words are projected: padding is about a quarter of a bucketed NLI batch, whose
        # hypotheses are shorter than its premises.
        leaves = self.leaf(_real(words, leaf_rows), lengths)  # (W, d_state)
        refusal = self._engine_refusal(follow, leaves)
        self._note_path("reference" if refusal else "engine", refusal)
        if refusal is not None:
            return self._run_reference(leaves, transitions, lengths, n_words, follow)
        if follow:
            return self._follow_predictions(leaves, transitions, lengths, n_words)
        return self._run_engine(leaves, transitions, lengths, schedule)

    def _run_engine(
        self, leaves: Tensor, transitions: Tensor, lengths: Tensor, schedule: Schedule
    ) -> SPINNOutput:
        """The stock cells over given transitions, on the engine."""
        h, tracker_h = encode_given(
            leaves,
            self.reduce.gates.weight,
            self.reduce.gates.bias,
            None if self.tracker is None else self.tracker.gates.weight,
            None if self.tracker is None else self.tracker.gates.bias,
            schedule,
            tracker_states=self.transition_head is not None,
        )
        if self.transition_head is None:
            return SPINNOutput(h=h)
        return self._with_transitions(
            h, self.transition_head(tracker_h).transpose(0, 1), transitions, lengths
        )

    def _with_transitions(
        self, h: Tensor, logits: Tensor, transitions: Tensor, lengths: Tensor, followed: Tensor | None = None
    ) -> SPINNOutput:
        """A full SPINN's output from its (B, T, 2) logits: the transitions it followed, or else the
        best valid ones given the stack the given transitions built."""
        return SPINNOutput(
            h=h,
            transition_logits=logits,
            transition_loss=None if transitions is None else transition_loss(logits, transitions),
            predicted_transitions=_best_valid(logits, transitions, lengths) if followed is None else followed,
        )

    def _engine_refusal(self, follow: bool, leaves: Tensor) -> str | None:
        """Why the fast engine cannot run this call (None: it can). It computes the stock cells only,
        reading their weights, so anything else -- a subclass, another module, hooks -- runs through
        the reference, which calls the modules. Without a gradient a full SPINN follows its own
        predictions on the engine too (its parse loop reads the transition head's weights)."""
        if not self.use_engine:
            return "use_engine is False"
        stock = [("reduce", Reduce), ("reduce.gates", nn.Linear)]
        if self.tracker is not None:
            stock += [("tracker", Tracker), ("tracker.gates", nn.Linear)]
        if follow:
            if needs_grad(leaves, *self.parameters()):
                return "a full SPINN following its own predictions with gradients"
            stock += [("transition_head", nn.Linear)]
        for name, cls in stock:
            module = self.get_submodule(name)
            if type(module) is not cls:
                return f"{name} is a {type(module).__qualname__}, not the stock {cls.__qualname__}"
            if _has_hooks(module):
                return f"{name} has hooks"
        if leaves.shape[-1] != 2 * self.d_hidden:
            return f"leaf states of {leaves.shape[-1]} columns, not [h; c] of 2 x {self.d_hidden}"
        return None

    def _note_path(self, path: str, reason: str | None) -> None:
        """Record which path ran in `last_path`, and log it at debug level when it changes."""
        if path != self.last_path:
            logger.debug("SPINN runs on the %s%s", path, "" if reason is None else f": {reason}")
        self.last_path = path

    def _run_reference(
        self, leaves: Tensor, transitions: Tensor | None, lengths: Tensor, n_words: int, follow: bool
    ) -> SPINNOutput:
        """The general path: `spinn.model.reference.run_machine`, calling the cells as modules."""
        cells = Cells(self.reduce, self.d_hidden, self.tracker, self.transition_head)
        given = None if follow else transitions.tolist()
        out = run_machine(cells, leaves, lengths.tolist(), given, 2 * n_words - 1)
        if self.transition_head is None:
            return SPINNOutput(h=out.h)
        followed = out.transitions if follow else None
        return self._with_transitions(out.h, out.transition_logits, transitions, lengths, followed)

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

    @torch.compiler.disable  # a host round trip every step: nothing for torch.compile to capture
    def _follow_predictions(
        self, leaves: Tensor, transitions: Tensor | None, lengths: Tensor, n_words: int
    ) -> SPINNOutput:
        """A full SPINN following its own predictions on the engine (no gradient needed)."""
        weights = StockWeights(
            self.tracker.gates.weight,
            self.tracker.gates.bias,
            self.reduce.gates.weight,
            self.reduce.gates.bias,
            self.transition_head.weight,
            self.transition_head.bias,
        )
        logits, actions, h = follow_predictions(leaves.detach(), lengths, n_words, weights)
        return self._with_transitions(h, logits, transitions, lengths, actions)


def _long_inputs(
    words: Tensor, transitions: Tensor | Sequence[Sequence[int]] | None, lengths: Tensor | Sequence[int]
) -> tuple[Tensor | None, Tensor]:
    """(transitions, lengths) as long tensors on the words' device, once ``words`` is known to be a tensor."""
    if not isinstance(words, Tensor):
        raise SpinnError(f"words: expected a float tensor of word vectors, found {type(words).__name__}")
    lengths = as_long_tensor(lengths, "lengths", words.device)
    if transitions is not None:
        transitions = as_long_tensor(transitions, "transitions", words.device)
    return transitions, lengths


def _given_schedule(
    schedule: Schedule | None,
    transitions: Tensor | None,
    lengths: Tensor,
    batch: int,
    n_words: int,
    device: torch.device,
) -> Schedule:
    """The schedule of the given transitions: ``schedule`` checked against them, or built."""
    if transitions is None:
        raise SpinnError("transitions is None: only a full SPINN following its predictions can parse")
    if schedule is None:
        return build_schedule(transitions, lengths).to(device)
    schedule.check_fits(batch, n_words)
    schedule.check_matches(transitions, lengths)
    return schedule


def _checked_lengths(lengths: Tensor, n_words: int) -> Tensor:
    """``lengths``, checked on the host to be 1..n_words (where no schedule checks them)."""
    host = lengths.cpu()
    wrong = (host < 1) | (host > n_words)
    if wrong.any():
        b = int(wrong.nonzero()[0, 0])
        raise SpinnError(f"sentence {b} of the batch has length {int(host[b])}, expected 1..{n_words}")
    return lengths


def _has_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on the module itself (torch keeps no public record of them)."""
    hooks = (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
    )
    return any(hooks)


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


def _best_valid(logits: Tensor, transitions: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) the best valid transition at each step given the stack the given transitions built."""
    real = transitions != PAD
    shifts_before = F.pad((transitions == SHIFT).long().cumsum(1)[:, :-1], (1, 0))
    depth_before = F.pad(
        ((transitions == SHIFT).long() - (transitions == REDUCE).long()).cumsum(1)[:, :-1], (1, 0)
    )
    best = best_allowed(logits, shifts_before < lengths[:, None], depth_before >= 2)
    return torch.where(real, best, PAD)
