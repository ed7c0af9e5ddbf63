"""The word vocabulary: ``<pad>`` (id 0), ``<unk>`` (id 1), then words by frequency, saved as plain JSON."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path

from spinn.errors import SpinnError
from spinn.io import open_input, write_text

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1


class Vocab:
    """A bijection between words and ids; unknown words map to ``<unk>``.

    Id 0 is ``<pad>`` (what `spinn.pad_sentences` pads with), id 1 is ``<unk>``; `build` and
    `from_counts` order the other words by descending frequency, ties broken alphabetically, so the same
    corpus always gives the same ids. Words are matched exactly (lower-case them yourself if needed).

    Example::

        vocab = Vocab.build([["A", "dog", "runs"], ["A", "cat"]])  # <pad> <unk> A cat dog runs
        vocab.encode(["A", "bird"])                                 # [2, 1]: "bird" is <unk>
        vocab.save("vocab.json"); Vocab.load("vocab.json") == vocab  # True

    Args:
        itos: every word in id order, starting with ``<pad>`` and ``<unk>``.

    Attributes:
        itos: the words by id (a list); stoi: word -> id (a dict).

    Raises:
        SpinnError: ``itos`` does not start with ``<pad>``, ``<unk>``, or lists a word twice.
    """

    def __init__(self, itos: Iterable[str]) -> None:
        self.itos: list[str] = list(itos)
        if self.itos[:2] != [PAD, UNK]:
            raise SpinnError(f"a vocabulary starts with {PAD!r}, {UNK!r}; found {self.itos[:2]}")
        self.stoi: dict[str, int] = {}
        for i, word in enumerate(self.itos):
            if word in self.stoi:
                raise SpinnError(
                    f"word {word!r} appears twice in the vocabulary (ids {self.stoi[word]}, {i})"
                )
            self.stoi[word] = i

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_freq: int = 1) -> Vocab:
        """Count the words of `token_lists` and keep those seen at least `min_freq` times.

        Args:
            token_lists: sentences as lists of words.
            min_freq: the fewest occurrences a word needs to get an id (rarer words become ``<unk>``).

        Raises:
            SpinnError: ``min_freq`` below 1.
        """
        return cls.from_counts(Counter(chain.from_iterable(token_lists)), min_freq)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_freq: int = 1) -> Vocab:
        """Like `build`, from word counts already made (e.g. `spinn.data.cache.NLITable.counts()`).

        Raises:
            SpinnError: ``min_freq`` below 1.
        """
        if min_freq < 1:
            raise SpinnError(f"min_freq must be >= 1, found {min_freq}")
        kept = [w for w, c in counts.items() if c >= min_freq and w not in (PAD, UNK)]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __getitem__(self, token: str) -> int:
        """The id of `token`, or ``<unk>``'s (1) for a word not in the vocabulary."""
        return self.stoi.get(token, UNK_ID)

    def __contains__(self, token: str) -> bool:
        """Whether `token` has an id of its own."""
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """The ids of `tokens`; unknown words get ``<unk>``'s id (1)."""
        get = self.stoi.get
        return [get(t, UNK_ID) for t in tokens]

    def content_hash(self) -> str:
        """A sha256 of the word list: equal for equal vocabularies, used as a cache key."""
        return hashlib.sha256("\n".join(self.itos).encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        """``{"itos": [...]}``: what `save` writes and checkpoints store."""
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Vocab:
        """Raises: SpinnError when `d` has no ``itos`` list of strings."""
        itos = d.get("itos") if isinstance(d, Mapping) else None
        if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
            raise SpinnError(f"a vocabulary is a mapping with key 'itos' (a list of words); found {d!r:.80}")
        return cls(itos)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as UTF-8 JSON (`to_dict`), atomically; `load` reads it back."""
        write_text(path, json.dumps(self.to_dict(), ensure_ascii=False), what="the vocabulary")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Raises: SpinnError when the file is missing, not JSON, or not a vocabulary."""
        path = Path(path)
        with open_input(path, "vocabulary file") as f:
            data = f.read()
        try:
            d = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SpinnError(f"{path}: not a JSON vocabulary ({err})") from None
        try:
            return cls.from_dict(d)
        except SpinnError as err:
            raise SpinnError(f"{path}: {err}") from None
