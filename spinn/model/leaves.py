"""The leaf encoders: what turns a sentence's word vectors into the states SHIFT puts on the stack.

A leaf encoder is a module called as ``leaf(words, lengths)``: words (W, d_input) the real words of a
batch, sentence after sentence (``lengths[b]`` rows for sentence b), lengths (B,); it returns the
leaves' states (W, d_state), h in their first ``d_hidden`` columns. `LEAVES` names the stock ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from spinn.errors import SpinnError


class Projection(nn.Linear):
    """``leaf = W x + b`` for each word on its own (the paper's leaves)."""

    def forward(self, words: Tensor, lengths: Tensor | None = None) -> Tensor:
        """words (W, d_input) -> (W, d_state); ``lengths`` is not needed."""
        return super().forward(words)


class SequentialLeaves(nn.Module):
    """A recurrent network run over each sentence's words before the stack (nyu-mll/spinn's sequential
    encoders), so that a leaf knows its context: ``leaf_i = RNN(x_1..x_i)``, or with ``bidirectional``
    ``[RNN_fwd(x_1..x_i); RNN_bwd(x_i..x_n)]``, the RNN an LSTM or a GRU whose output is the state.

    Args:
        cell: "lstm" or "gru".
        d_input: size of the word vectors.
        d_state: size of a leaf's state (the RNN's output; split between the directions).
        bidirectional: run a second RNN from the last word back.

    Raises:
        SpinnError: bidirectional with an odd d_state.
    """

    def __init__(self, cell: str, d_input: int, d_state: int, bidirectional: bool = False) -> None:
        super().__init__()
        if bidirectional and d_state % 2:
            raise SpinnError(
                f"a bidirectional leaf encoder splits the state in two: d_state {d_state} is odd"
            )
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(d_input, d_state // (1 + bidirectional), batch_first=True, bidirectional=bidirectional)

    def forward(self, words: Tensor, lengths: Tensor) -> Tensor:
        """words (W, d_input), lengths (B,) -> (W, d_state)."""
        counts = lengths.tolist()  # a host read: the sequences are packed by length
        out, _ = self.rnn(pack_sequence(words.split(counts), enforce_sorted=False))
        padded, _ = pad_packed_sequence(out, batch_first=True)  # (B, N, d_state)
        real = torch.arange(padded.shape[1], device=padded.device) < lengths[:, None].to(padded.device)
        return padded[real]


#: The leaf encoders by name.
LEAVES = ("projection", "lstm", "bilstm", "gru")


def make_leaf(leaf: str | nn.Module, d_input: int, d_state: int) -> nn.Module:
    """The leaf encoder named ``leaf`` (one of `LEAVES`), or the given module as it is.

    Raises:
        SpinnError: an unknown name.
    """
    if not isinstance(leaf, str):
        return leaf
    if leaf == "projection":
        return Projection(d_input, d_state)
    if leaf in ("lstm", "gru"):
        return SequentialLeaves(leaf, d_input, d_state)
    if leaf == "bilstm":
        return SequentialLeaves("lstm", d_input, d_state, bidirectional=True)
    raise SpinnError(f"leaf {leaf!r} is unknown, expected one of {', '.join(LEAVES)} or a module")
