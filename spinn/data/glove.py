"""GloVe word vectors for a vocabulary, from the official ``.txt``, ``.txt.gz`` or ``.zip`` files.

Each line is a word and ``dim`` values separated by single spaces. In glove.840B.300d some words
contain spaces, so the vector is always the last ``dim`` fields and the word is everything before
them. Only lines whose word is in the vocabulary are converted to floats; the rest are only counted,
which is what makes a 2.2-million-row file load fast. A word listed twice keeps its first vector.

Words not found: ``<pad>`` (id 0) is all zeros; every other missing word (``<unk>`` included) is drawn
from a normal distribution with mean 0 and the standard deviation of all found values, from a
generator seeded with ``seed``, so the matrix is reproducible.

Coverage: a vocabulary none of whose words is in the file is an error (the wrong file, or cased data
against the lower-case 6B/42B vectors); one with fewer than `LOW_COVERAGE` of its words found gets a
warning with the figure. Words are matched as UTF-8 bytes; a byte-order mark before the first word
is ignored. A truncated or corrupt ``.gz`` or ``.zip`` is an error naming the file.

The result is cached as ``<source name>.<path hash>.<dim>d.<vocabulary hash>.pt`` in ``cache_dir``
or the per-user cache folder (never beside the source), keyed on the source file's path, size and
mtime; see `spinn.data.cache`.
"""

from __future__ import annotations

import gzip
import io
import re
import warnings
import zipfile
import zlib
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
from spinn.io import check_readable, read_lines

_PROGRESS_EVERY = 16384
#: Below this fraction of vocabulary words found, `load_glove` warns.
LOW_COVERAGE = 0.5
_BOM = b"\xef\xbb\xbf"
_FLOAT = re.compile(rb"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(nan|inf)", re.IGNORECASE)


@dataclass
class GloveResult:
    """What `load_glove` returns: embeddings for a vocabulary.

    Attributes:
        vectors: (len(vocab), dim) float32, row i for word id i: ready for ``nn.Embedding``.
        found: how many vocabulary words had a GloVe vector.
        total: len(vocab).
        found_mask: (len(vocab),) bool, which rows come from the file (the others are random, and
            ``<pad>``'s is zeros).
    """

    vectors: torch.Tensor
    found: int
    total: int
    found_mask: torch.Tensor

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
    """An embedding matrix for `vocab` from a GloVe file: the file's vector for each word it has,
    zeros for ``<pad>``, random vectors for the rest (see the module docstring for the rules).

    Example::

        vocab = Vocab.build([["a", "dog", "runs"], ["the", "cat", "sleeps"]])
        glove = load_glove("glove.6B.zip", vocab, 300)
        embed = nn.Embedding.from_pretrained(glove.vectors, freeze=True, padding_idx=0)

    Args:
        path: ``glove.*.txt``, ``glove.*.txt.gz`` or an official ``.zip`` (for ``glove.6B.zip``, which
            holds four files, the member ending in ``.<dim>d.txt`` is used).
        vocab: the words to look up (exact match: lower-case the data for the lower-case 6B and 42B).
        dim: the vector size the file must have.
        cache_dir: where to cache the result; None: `spinn.data.cache.default_cache_dir`
            (``$SPINN_CACHE_DIR``, else ``$XDG_CACHE_HOME/spinn``, else ``~/.cache/spinn``).
        progress: show a progress bar while the file is scanned.
        seed: seeds the initialisation of words not found.
        use_cache: read and write the cache; False: scan the file every time.

    Returns:
        `GloveResult`: ``vectors`` (len(vocab), dim) float32, and how many words were ``found``.

    Warns:
        UserWarning: fewer than `LOW_COVERAGE` of the vocabulary words were found; or the cache
            folder cannot be written (the result is returned uncached).

    Raises:
        SpinnError: a missing, truncated or corrupt file, a zip without a matching member, a line whose
            number of values is not `dim` (naming the file and line), or no vocabulary word found.
    """
    path = check_readable(path, "GloVe file")
    if dim < 1:
        raise SpinnError(f"GloVe dim must be >= 1, found {dim}")
    key = {"source": source_key(path), "dim": dim, "vocab": vocab.content_hash(), "seed": seed}
    target = cache_path(path, f"{dim}d.{key['vocab'][:16]}", cache_dir)
    if use_cache:
        payload = load_cache(target, key)
        if payload is not None and payload["words"] == vocab.itos:
            _check_coverage(path, int(payload["found"]), len(vocab))
            return GloveResult(payload["vectors"], int(payload["found"]), len(vocab), payload["found_mask"])

    vectors, found_mask = _read_vectors(path, vocab, dim, progress)
    found = int(found_mask.sum())
    _check_coverage(path, found, len(vocab))
    _fill_missing(vectors, found_mask, seed)
    result = GloveResult(torch.from_numpy(vectors), found, len(vocab), torch.from_numpy(found_mask))
    if use_cache:
        save_cache(
            target,
            key,
            {"vectors": result.vectors, "found": found, "found_mask": result.found_mask, "words": vocab.itos},
        )
    return result


def _read_vectors(path: Path, vocab: Vocab, dim: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, found_mask): (len(vocab), dim) with the file's rows of the vocabulary words (zeros
    elsewhere), and which rows were found."""
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    found_mask = np.zeros(len(vocab), dtype=bool)
    wanted = {w.encode("utf-8"): i for i, w in enumerate(vocab.itos) if i != PAD_ID}
    try:
        with _open_glove(path, dim) as (stream, name, size, position):
            _scan(stream, name, dim, wanted, vectors, found_mask, size, position, progress)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        raise SpinnError(
            f"{path}: cannot read this GloVe file ({err}); is it truncated or corrupt?"
        ) from None
    return vectors, found_mask


def _fill_missing(vectors: np.ndarray, found_mask: np.ndarray, seed: int) -> None:
    """Random rows, as spread as the found ones, for the words not found; zeros for ``<pad>``."""
    missing = ~found_mask
    missing[PAD_ID] = False
    std = float(vectors[found_mask].std())
    g = torch.Generator().manual_seed(seed)
    vectors[missing] = (torch.randn(int(missing.sum()), vectors.shape[1], generator=g) * std).numpy()
    vectors[PAD_ID] = 0.0


def _check_coverage(path: Path, found: int, total: int) -> None:
    hint = "is it the right file, and does the data's casing match it (glove.6B and 42B are lower-case)?"
    if found == 0:
        raise SpinnError(f"{path}: none of the {total} vocabulary words has a vector; {hint}")
    if found < LOW_COVERAGE * total:
        warnings.warn(
            f"{path}: only {found} of {total} vocabulary words ({found / total:.1%}) have a vector, "
            f"the rest are random; {hint}",
            stacklevel=3,
        )


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
        for line_no, line in read_lines(stream, name):
            if line_no == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
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
                word, values = _split_odd_line(line, at(name, line_no), dim, first=line_no == 1)
            i = wanted.get(word)
            if i is None or found_mask[i]:
                continue
            vectors[i] = _parse_row(values, name, line_no, dim)
            found_mask[i] = True
        bar.update(position() - bar.n)


def _split_odd_line(line: bytes, where: str, dim: int, *, first: bool) -> tuple[bytes, bytes]:
    """(word, values) of a line with other than ``dim`` spaces: a trailing space or CR, a word with
    spaces (840B), or too few or too many values, which raise SpinnError; too many show as a number
    right after the first part of the would-be word."""
    if b"\t" in line:
        raise SpinnError(f"{where}: a tab in the line, expected values separated by spaces")
    fields = line.rsplit(b" ", dim)
    if len(fields) <= dim or _FLOAT.fullmatch(fields[0].split(b" ")[-1]):
        n = len(line.split()) - 1
        # On the first line the likely cause is a file of another size, not one bad line.
        other = f": this file holds {n}-d vectors, not {dim}-d" if first else ""
        raise SpinnError(f"{where}: {n} values after the word, expected {dim}{other}")
    return fields[0], b" ".join(fields[1:])


def _parse_row(values: bytes, name: str, line_no: int, dim: int) -> np.ndarray:
    """The ``dim`` numbers of a kept row, or SpinnError.

    Only the rows kept are checked in full: a stray space can pass the count in `_scan`, and one NaN
    would spread to every random vector through the standard deviation.
    """
    try:
        row = np.asarray(values.split(), dtype=np.float32)
    except ValueError as err:
        raise SpinnError(f"{at(name, line_no)}: a value is not a number ({err})") from None
    if row.shape != (dim,):
        raise SpinnError(f"{at(name, line_no)}: {row.size} values after the word, expected {dim}")
    if not np.isfinite(row).all():
        raise SpinnError(f"{at(name, line_no)}: a value is not finite (nan or inf), expected numbers")
    return row


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
