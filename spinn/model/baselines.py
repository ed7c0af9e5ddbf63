"""Sequential baseline sentence encoders with the SPINN encoder's interface: CBOW and an LSTM.

Both take what `spinn.model.spinn.SPINN` takes (word vectors, padded (B, N, D) or packed (W, D) as
`NLIClassifier` passes them, transitions and lengths) and return a `SPINNOutput` whose ``h`` is the
(B, d_out) sentence vector; they ignore the transitions, so they see each sentence as a sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from spinn.errors import SpinnError
from spinn.model.spinn import SPINNOutput
from spinn.schedule import Schedule, real_words

#: The sentence encoders `NLIClassifier` can use.
ENCODERS = ("spinn", "cbow", "lstm")
#: How each baseline pools its word (or LSTM output) vectors into one.
POOLINGS = {"cbow": ("sum", "mean", "max"), "lstm": ("last", "mean", "max")}


def padded_words(words: Tensor, lengths: Tensor) -> Tensor:
    """(B, N, D) word vectors, N the longest sentence, zeros in the padding; `words` is either that
    already (wider padding is cut) or the packed (W, D) real words, sentence after sentence.

    Raises:
        SpinnError: packed words whose count is not ``lengths.sum()``.
    """
    n = int(lengths.max())
    if words.dim() == 3:
        return words[:, :n]
    if len(words) != int(lengths.sum()):
        raise SpinnError(f"{len(words)} packed word vectors for {int(lengths.sum())} words (lengths.sum())")
    leaf_rows, _ = real_words(lengths, n)
    out = words.new_zeros(len(lengths) * n, words.shape[-1])
    out[leaf_rows] = words
    return out.view(len(lengths), n, -1)


def pool(vectors: Tensor, lengths: Tensor, how: str) -> Tensor:
    """(B, D) pooled over the real rows of (B, N, D) `vectors`: ``sum``, ``mean`` or ``max``."""
    mask = torch.arange(vectors.shape[1], device=vectors.device)[None, :] < lengths[:, None]  # (B, N)
    if how == "max":
        return vectors.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)
    total = (vectors * mask[:, :, None]).sum(dim=1)
    return total if how == "sum" else total / lengths[:, None].to(vectors.dtype)


class CBOW(nn.Module):
    """Continuous bag of words: the sum, mean or max of a sentence's word vectors (d_out = d_input).

    Raises:
        SpinnError: an unknown pooling.
    """

    def __init__(self, d_input: int, pooling: str = "sum") -> None:
        super().__init__()
        if pooling not in POOLINGS["cbow"]:
            raise SpinnError(f"cbow pooling {pooling!r}: expected one of {', '.join(POOLINGS['cbow'])}")
        self.pooling = pooling
        self.d_out = d_input

    def forward(
        self,
        words: Tensor,
        transitions: Tensor | None,
        lengths: Tensor,
        *,
        use_given_transitions: bool | None = None,
        schedule: Schedule | None = None,
    ) -> SPINNOutput:
        """`SPINNOutput` with ``h`` (B, d_input); the transitions are not read."""
        return SPINNOutput(h=pool(padded_words(words, lengths), lengths, self.pooling))


class LSTMEncoder(nn.Module):
    """An LSTM over the words, uni- or bidirectional; the sentence vector is its last state (both
    directions' final states for a bidirectional one) or the mean or max of its outputs.
    d_out = d_hidden, twice that when bidirectional.

    Raises:
        SpinnError: an unknown pooling or a size below 1.
    """

    def __init__(self, d_input: int, d_hidden: int, *, bidirectional: bool = False, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS["lstm"]:
            raise SpinnError(f"lstm pooling {pooling!r}: expected one of {', '.join(POOLINGS['lstm'])}")
        if d_hidden < 1:
            raise SpinnError(f"d_hidden: expected a size >= 1, found {d_hidden}")
        self.lstm = nn.LSTM(d_input, d_hidden, batch_first=True, bidirectional=bidirectional)
        self.pooling = pooling
        self.d_out = d_hidden * (2 if bidirectional else 1)

    def forward(
        self,
        words: Tensor,
        transitions: Tensor | None,
        lengths: Tensor,
        *,
        use_given_transitions: bool | None = None,
        schedule: Schedule | None = None,
    ) -> SPINNOutput:
        """`SPINNOutput` with ``h`` (B, d_out); the transitions are not read."""
        x = padded_words(words, lengths)  # (B, N, d_input)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (h_n, _) = self.lstm(packed)  # h_n: (directions, B, d_hidden)
        if self.pooling == "last":
            return SPINNOutput(h=torch.cat(list(h_n), dim=1))
        padded, _ = pad_packed_sequence(outputs, batch_first=True)  # (B, N, d_out)
        return SPINNOutput(h=pool(padded, lengths, self.pooling))
