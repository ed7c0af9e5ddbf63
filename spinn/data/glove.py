"""GloVe word vectors for a vocabulary, from the official ``.txt``, ``.txt.gz`` or ``.zip`` files.

Each line is a word and ``dim`` values separated by single spaces. In glove.840B.300d some words
contain spaces, so the vector is always the last ``dim`` fields and the word is everything before
them. Only lines whose word is in the vocabulary are converted to floats; the rest are only counted,
which is what makes a 2.2-million-row file load fast. A word listed twice keeps its first vector.

Words not found: ``<pad>`` (id 0) is all zeros; every other missing word (``<unk>`` included) is drawn
from a normal distribution with mean 0 and the standard deviation of all found values (1 when none
is found), from a generator seeded with ``seed``, so the matrix is reproducible.

The result is cached as ``<source name>.<dim>d.<vocabulary hash>.pt`` next to the source (or in
``cache_dir``), keyed on the source file's path, size and mtime; see `spinn.data.cache`.
"""

from __future__ import annotations

import gzip
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from spinn.data.cache import cache_path, load_cache, save_cache, source_key
from spinn.data.vocab import PAD_ID, Vocab
from spinn.errors import SpinnError, at

_PROGRESS_EVERY = 16384
_FLOAT = re.compile(rb"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(nan|inf)", re.IGNORECASE)


@dataclass
class GloveResult:
    """Embeddings for a vocabulary: ``vectors`` (len(vocab), dim) float32; ``found`` of ``total``
    vocabulary words had a GloVe vector (``found_mask`` (len(vocab),) bool says which)."""

    vectors: torch.Tensor
    found: int
    total: int
    found_mask: torch.Tensor | None = None

    @property
    def coverage(self) -> float:
        return self.found / self.total if self.total else 0.0


def load_glove(
    path: str | Path,
    vocab: Vocab,
    dim: int,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    use_cache: bool = True,
) -> GloveResult:
    """Look up every vocabulary word in a GloVe file; see the module docstring for the rules.

    Args:
        path: ``glove.*.txt``, ``glove.*.txt.gz`` or an official ``.zip`` (for ``glove.6B.zip``, which
            holds four files, the member ending in ``.<dim>d.txt`` is used).
        vocab: the words to look up (exact match: lower-case the data for the lower-case 6B and 42B).
        dim: the vector size the file must have.
        cache_dir: where to cache the result; next to the source when None.
        seed: seeds the initialisation of words not found.

    Raises:
        SpinnError: a missing file, a zip without a matching member, or a line whose number of values
            is not `dim` (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise SpinnError(f"{path}: no such GloVe file")
    if dim < 1:
        raise SpinnError(f"GloVe dim must be >= 1, found {dim}")
    key = {"source": source_key(path), "dim": dim, "vocab": vocab.content_hash(), "seed": seed}
    target = cache_path(path, f"{dim}d.{key['vocab'][:16]}", cache_dir)
    if use_cache:
        payload = load_cache(target, key)
        if payload is not None and payload["words"] == vocab.itos:
            return GloveResult(payload["vectors"], int(payload["found"]), len(vocab), payload["found_mask"])

    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    found_mask = np.zeros(len(vocab), dtype=bool)
    wanted = {w.encode("utf-8"): i for i, w in enumerate(vocab.itos) if i != PAD_ID}
    with _open_glove(path, dim) as (stream, name, size, position):
        _scan(stream, name, dim, wanted, vectors, found_mask, size, position, progress)

    found = int(found_mask.sum())
    missing = ~found_mask
    missing[PAD_ID] = False
    std = float(vectors[found_mask].std()) if found else 1.0
    g = torch.Generator().manual_seed(seed)
    vectors[missing] = (torch.randn(int(missing.sum()), dim, generator=g) * std).numpy()
    vectors[PAD_ID] = 0.0
    result = GloveResult(torch.from_numpy(vectors), found, len(vocab), torch.from_numpy(found_mask))
    if use_cache:
        save_cache(
            target,
            key,
            {"vectors": result.vectors, "found": found, "found_mask": result.found_mask, "words": vocab.itos},
        )
    return result


def _scan(
    stream: BinaryIO,
    name: str,
    dim: int,
    wanted: dict[bytes, int],
    vectors: np.ndarray,
    found_mask: np.ndarray,
    size: int,
    position: Callable[[], int],
    progress: bool,
) -> None:
    with tqdm(total=size, unit="B", unit_scale=True, desc=Path(name).name, disable=not progress) as bar:
        for line_no, line in enumerate(stream, 1):
            if line_no % _PROGRESS_EVERY == 0:
                bar.update(position() - bar.n)
            # The common case, checked without copying the line: the word, then exactly dim values.
            if line.count(b" ") == dim:
                word = line[: line.find(b" ")]
                values = line[len(word) + 1 :]
            else:
                line = line.rstrip(b"\r\n ")
                if not line:
                    continue
                # Left: a trailing space or CR, a word with spaces (840B), or too few or too many values;
                # too many show as a number right after the first part of the would-be word.
                fields = line.rsplit(b" ", dim)
                if len(fields) <= dim or _FLOAT.fullmatch(fields[0].split(b" ")[-1]):
                    raise SpinnError(
                        f"{at(name, line_no)}: {len(line.split()) - 1} values after the word, expected {dim}"
                    )
                word, values = fields[0], b" ".join(fields[1:])
            i = wanted.get(word)
            if i is None or found_mask[i]:
                continue
            try:
                vectors[i] = np.asarray(values.split(), dtype=np.float32)
            except ValueError as err:
                raise SpinnError(f"{at(name, line_no)}: a value is not a number ({err})") from None
            found_mask[i] = True
        bar.update(position() - bar.n)


@contextmanager
def _open_glove(path: Path, dim: int) -> Iterator[tuple[BinaryIO, str, int, Callable[[], int]]]:
    """Yield (binary line stream, name for messages, bytes to read, function giving bytes read)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith(".txt")]
            if len(members) > 1:
                members = [i for i in members if i.filename.endswith(f".{dim}d.txt")]
            if len(members) != 1:
                raise SpinnError(
                    f"{path}: expected one GloVe .txt member (or one ending in .{dim}d.txt), found "
                    f"{[i.filename for i in zf.infolist()]}"
                )
            with zf.open(members[0]) as raw:
                stream = io.BufferedReader(raw, buffer_size=1 << 20)
                yield stream, f"{path}/{members[0].filename}", members[0].file_size, raw.tell
    else:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
            yield stream, str(path), path.stat().st_size, raw.tell
