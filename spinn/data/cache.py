"""Preprocessed-dataset cache: an NLI file parsed once, stored as tensors, reloaded in about a second.

A cache file holds a ``key`` (format version, the source file's resolved path, size and mtime, and the
reading options) next to its payload of tensors and plain lists; it is written with `torch.save` to a
temporary file of a unique name and moved into place with `os.replace`, so a reader sees either the
old file or the new one whole, and processes that build the same cache at once each write their own
temporary file and the last rename wins (the contents are equal). It is read back with
``weights_only=True`` only: a cache file cannot run code, whoever wrote it. When the key differs (the
source changed, or the format did) the cache is stale and is rebuilt in place; a file that cannot be
read (truncated, corrupt, or not a plain-data pickle) is rebuilt with a warning.

Where: ``cache_dir`` when given (``data.cache_dir`` in a config), else `default_cache_dir`: the folder
``$SPINN_CACHE_DIR``, else ``$XDG_CACHE_HOME/spinn``, else ``~/.cache/spinn``; never the data's own
folder. A cache file is named ``<source name>.<hash of its resolved path>.<tag>.pt``, so that files of
the same name in different folders keep their own caches. Where the folder is not writable the data is
still returned, with a warning, uncached.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import multiprocessing
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, pairwise
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinn.data.snli import NLIExample, read_nli
from spinn.errors import SpinnError
from spinn.io import WriteError, atomic_write
from spinn.transitions import TRIVIAL_TREES

CACHE_VERSION = 2


def source_key(path: Path) -> dict[str, Any]:
    """What identifies a source file's content cheaply: resolved path, size and modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


#: The environment variable that names the cache folder; it wins over ``XDG_CACHE_HOME``.
CACHE_DIR_ENV = "SPINN_CACHE_DIR"


def default_cache_dir() -> Path:
    """The folder caches go to when no ``cache_dir`` is given: ``$SPINN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/spinn`` (an absolute path, as the XDG base directory spec requires; a relative
    one is ignored), else ``~/.cache/spinn``. Empty variables count as unset."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "spinn"


def cache_path(source: Path, tag: str, cache_dir: str | Path | None) -> Path:
    """The cache file of `source` for `tag`, in `cache_dir` or else `default_cache_dir`."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    where = hashlib.sha256(str(Path(source).resolve()).encode("utf-8")).hexdigest()[:12]
    return folder / f"{source.name}.{where}.{tag}.pt"


def load_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached payload when `path` exists and was written under `key`; None when missing or stale."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file is rebuilt, not fatal
        warnings.warn(f"{path}: unreadable cache ({err}); rebuilding it", stacklevel=2)
        return None
    if not isinstance(obj, dict) or obj.get("key") != {"version": CACHE_VERSION, **key}:
        return None
    if not isinstance(obj.get("payload"), dict):
        warnings.warn(f"{path}: cache without a payload; rebuilding it", stacklevel=2)
        return None
    return obj["payload"]


def save_cache(path: Path, key: dict[str, Any], payload: dict[str, Any]) -> bool:
    """Write `payload` atomically; warn and return False where the folder cannot be written, or is
    marked read-only (no write permission for anyone): root could write there, but should not."""
    if path.parent.is_dir() and not stat.S_IMODE(path.parent.stat().st_mode) & 0o222:
        warnings.warn(f"{path.parent}: read-only folder; continuing without a cache there", stacklevel=2)
        return False
    try:
        with atomic_write(path, binary=True, what="the cache") as f:
            torch.save({"key": {"version": CACHE_VERSION, **key}, "payload": payload}, f)
    except WriteError as err:
        warnings.warn(f"{err}; continuing without it", stacklevel=2)
        return False
    return True


@dataclass
class NLITable:
    """The examples of one NLI file in columns: word ids into the file's own word list, flattened.

    For N examples with premise lengths n_i (words) the premise columns are
    ``premise_ids`` (sum n_i,) int32 into ``words``, ``premise_offsets`` (N + 1,) int64 (example i's
    words are ``premise_ids[off[i]:off[i + 1]]``) and ``premise_transitions`` (sum (2 n_i - 1),) int8,
    where example i's transitions start at ``2 * off[i] - i``. The hypothesis columns are alike.
    ``labels`` is (N,) int64; ``word_counts`` (len(words),) int64 counts each word over both sides.
    """

    words: list[str]
    word_counts: torch.Tensor
    premise_ids: torch.Tensor
    premise_offsets: torch.Tensor
    premise_transitions: torch.Tensor
    #: None for single sentences (examples without a hypothesis), as are the other hypothesis columns.
    hypothesis_ids: torch.Tensor | None
    hypothesis_offsets: torch.Tensor | None
    hypothesis_transitions: torch.Tensor | None
    labels: torch.Tensor
    pair_ids: list[str]
    genres: list[str | None] | None = None
    no_gold: int = 0
    invalid: int = 0
    too_long: int = 0

    def __len__(self) -> int:
        return len(self.pair_ids)

    def counts(self) -> dict[str, int]:
        """Word -> count over premises and hypotheses, for `spinn.data.vocab.Vocab.from_counts`."""
        return dict(zip(self.words, self.word_counts.tolist(), strict=True))

    @classmethod
    def from_examples(
        cls, examples: Sequence[NLIExample], *, no_gold: int = 0, invalid: int = 0, too_long: int = 0
    ) -> NLITable:
        # Assigns the next id to each new word at C speed: d[w] inserts len(d) when w is missing.
        local: defaultdict[str, int] = defaultdict()
        local.default_factory = local.__len__
        lookup = local.__getitem__
        columns = []
        pairs = not examples or examples[0].hypothesis is not None
        for side in ("premise", "hypothesis") if pairs else ("premise",):
            words, trans = attrgetter(side), attrgetter(f"{side}_transitions")
            ids = np.fromiter(map(lookup, chain.from_iterable(map(words, examples))), dtype=np.int32)
            lengths = np.fromiter(map(len, map(words, examples)), dtype=np.int64, count=len(examples))
            n_trans = np.fromiter(map(len, map(trans, examples)), dtype=np.int64, count=len(examples))
            bad = np.flatnonzero((lengths < 1) | (n_trans != 2 * lengths - 1))
            if len(bad):
                ex = examples[bad[0]]
                raise SpinnError(
                    f"example {ex.pair_id!r}: {side} has {lengths[bad[0]]} words and {n_trans[bad[0]]} "
                    f"transitions, expected n >= 1 words and 2 n - 1 transitions"
                )
            offsets = np.zeros(len(examples) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            flat_trans = np.fromiter(chain.from_iterable(map(trans, examples)), dtype=np.int8)
            columns.append((torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(flat_trans)))
        (p_ids, p_off, p_trans), (h_ids, h_off, h_trans) = columns if pairs else [*columns, (None,) * 3]
        all_ids = [c[0].numpy() for c in columns]
        counts = np.bincount(np.concatenate(all_ids), minlength=len(local))
        genres = [ex.genre for ex in examples]
        return cls(
            words=list(local),
            word_counts=torch.from_numpy(counts.astype(np.int64)),
            premise_ids=p_ids,
            premise_offsets=p_off,
            premise_transitions=p_trans,
            hypothesis_ids=h_ids,
            hypothesis_offsets=h_off,
            hypothesis_transitions=h_trans,
            labels=torch.tensor([ex.label for ex in examples], dtype=torch.long),
            pair_ids=[ex.pair_id for ex in examples],
            genres=genres if any(g is not None for g in genres) else None,
            no_gold=no_gold,
            invalid=invalid,
            too_long=too_long,
        )

    def to_payload(self) -> dict[str, Any]:
        """Tensors and plain values only; the string lists packed (a genre of None is stored as "")."""
        payload = dict(self.__dict__)
        payload["words"] = _pack(self.words)
        payload["pair_ids"] = _pack(self.pair_ids)
        payload["genres"] = None if self.genres is None else _pack([g or "" for g in self.genres])
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> NLITable:
        fields = dict(payload)
        fields["words"] = _unpack(payload["words"])
        fields["pair_ids"] = _unpack(payload["pair_ids"])
        if payload["genres"] is not None:
            fields["genres"] = [g or None for g in _unpack(payload["genres"])]
        return cls(**fields)


def with_trivial_trees(table: NLITable, trees: str) -> NLITable:
    """`table` with every sentence's transitions replaced by the trivial tree `trees` over its words:
    one of `spinn.transitions.TRIVIAL_TREES` (left, right, balanced), or "given" (`table` itself).

    Raises:
        SpinnError: an unknown name.
    """
    if trees == "given":
        return table
    if trees not in TRIVIAL_TREES:
        raise SpinnError(f"trees {trees!r}: expected given or one of {', '.join(TRIVIAL_TREES)}")
    make = functools.cache(lambda n: np.array(TRIVIAL_TREES[trees](n), dtype=np.int8))
    columns = {}
    for side in ("premise", "hypothesis"):
        offsets = getattr(table, f"{side}_offsets")
        if offsets is not None:
            lengths = np.diff(offsets.numpy()).tolist()
            columns[f"{side}_transitions"] = torch.from_numpy(np.concatenate([make(n) for n in lengths]))
    return dataclasses.replace(table, **columns)


def _pack(strings: list[str]) -> dict[str, Any]:
    """One string and a tensor of lengths: a list of 550k strings takes seconds to unpickle with
    ``weights_only=True``; this takes a fraction of a second."""
    return {"text": "".join(strings), "lengths": torch.tensor([len(s) for s in strings], dtype=torch.int64)}


def _unpack(packed: dict[str, Any]) -> list[str]:
    text = packed["text"]
    ends = np.cumsum(packed["lengths"].numpy()).tolist()
    return [text[a:b] for a, b in zip([0, *ends], ends, strict=False)]


def load_nli(
    path: str | Path,
    *,
    lowercase: bool = False,
    skip_invalid: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int = 1,
    max_length: int | None = None,
    too_long: str = "error",
    check_text: bool = True,
) -> NLITable:
    """`spinn.data.snli.read_nli` into an `NLITable`, cached so that a second call skips parsing.

    Args:
        path: an SNLI/MultiNLI ``.jsonl`` or ``.txt`` file (see `read_nli`).
        cache_dir: the cache folder; None: `default_cache_dir` (never the data's folder).
        use_cache: read and write the cache; False: parse the file every time.
        workers: processes that parse an uncompressed ``.jsonl`` of at least 64 MB in parallel, one
            contiguous part each (no progress bar then); other files are read in this process.
        max_length, too_long: the sentence length policy of `spinn.data.snli.read_nli`.
        check_text: as in `spinn.data.snli.read_nli`.

    Raises:
        SpinnError: as `read_nli`.
    """
    path = Path(path)
    options = {
        "lowercase": lowercase,
        "skip_invalid": skip_invalid,
        "max_length": max_length,
        "too_long": too_long,
        "check_text": check_text,
    }
    if use_cache:
        target = cache_path(path, _nli_tag(**options), cache_dir)
        key = {"source": source_key(path) if path.is_file() else None, "options": options}
        payload = load_cache(target, key)
        if payload is not None:
            return NLITable.from_payload(payload)
    table = _parse_nli(path, workers, progress, options)
    if use_cache:
        save_cache(target, key, table.to_payload())
    return table


def _nli_tag(
    lowercase: bool, skip_invalid: bool, max_length: int | None, too_long: str, check_text: bool
) -> str:
    """The cache file's tag: the reading options that change the table, readable in its name."""
    tag = "nli" + ("-lower" if lowercase else "") + ("-skip" if skip_invalid else "")
    if max_length is not None:
        tag += f"-max{max_length}{too_long}"
    if not check_text:
        tag += "-textunchecked"
    return tag


def _parse_nli(path: Path, workers: int, progress: bool, options: dict[str, Any]) -> NLITable:
    """Read the file into a table: in ``workers`` processes where it is a large uncompressed ``.jsonl``."""
    if (
        workers > 1
        and path.suffix == ".jsonl"
        and path.is_file()
        and path.stat().st_size >= PARALLEL_MIN_BYTES
    ):
        return _read_parallel(path, workers, **options)
    data = read_nli(path, progress=progress, **options)
    return NLITable.from_examples(
        data.examples, no_gold=data.no_gold, invalid=data.invalid, too_long=data.too_long
    )


#: Below this size a file is read in one process: starting workers would cost more than it saves.
PARALLEL_MIN_BYTES = 64 << 20


def _read_parallel(path: Path, workers: int, **options: Any) -> NLITable:
    """Split the file at line starts into `workers` parts, parse them in processes, and merge."""
    size = path.stat().st_size
    bounds = [0]
    first_lines = [1]
    with open(path, "rb") as f:
        for k in range(1, workers):
            f.seek(max(size * k // workers, bounds[-1]))
            f.readline()
            bounds.append(min(f.tell(), size))
        bounds.append(size)
        # Line numbers for messages: count the newlines before each part.
        f.seek(0)
        for a, b in pairwise(bounds[:-1]):
            newlines = 0
            while b > a:
                chunk = f.read(min(b - a, 1 << 24))
                newlines += chunk.count(b"\n")
                a += len(chunk)
            first_lines.append(first_lines[-1] + newlines)
    # fork starts workers at once and shares the imported modules; spawn is the fallback elsewhere.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [
            pool.submit(_read_part, path, (a, b), line, options)
            for (a, b), line in zip(pairwise(bounds), first_lines, strict=True)
        ]
        parts = [f.result() for f in futures]
    return _merge([NLITable.from_payload(_map_tensors(p, torch.as_tensor)) for p in parts])


def _read_part(path: Path, byte_range: tuple[int, int], first_line: int, options: dict[str, Any]) -> dict:
    # As in DataLoader workers: a forked child must not use the parent's OpenMP thread pool.
    torch.set_num_threads(1)
    data = read_nli(path, progress=False, byte_range=byte_range, first_line=first_line, **options)
    table = NLITable.from_examples(
        data.examples, no_gold=data.no_gold, invalid=data.invalid, too_long=data.too_long
    )
    payload = table.to_payload()
    # Tensors would travel through torch's shared-memory file descriptors; numpy arrays pickle plainly.
    return _map_tensors(payload, torch.Tensor.numpy)


def _map_tensors(payload: Any, fn: Any) -> Any:
    """`payload` with `fn` applied to every tensor or array in it (dicts and lists are walked)."""
    if isinstance(payload, dict):
        return {k: _map_tensors(v, fn) for k, v in payload.items()}
    if isinstance(payload, torch.Tensor | np.ndarray):
        return fn(payload)
    return payload


def _merge(parts: list[NLITable]) -> NLITable:
    """One table from consecutive parts: word lists united, ids remapped, offsets shifted."""
    index: dict[str, int] = {}
    sides: dict[str, list[list[torch.Tensor]]] = {"premise": [[], [], []], "hypothesis": [[], [], []]}
    for t in parts:
        remap = torch.tensor([index.setdefault(w, len(index)) for w in t.words], dtype=torch.int32)
        for side, (ids, offsets, trans) in sides.items():
            shift = sum(len(x) for x in ids)  # the words before this part (a part may hold none)
            ids.append(remap[getattr(t, f"{side}_ids").long()])
            offsets.append(getattr(t, f"{side}_offsets")[(1 if offsets else 0) :] + shift)
            trans.append(getattr(t, f"{side}_transitions"))
    columns = {side: [torch.cat(c) for c in cols] for side, cols in sides.items()}
    all_ids = torch.cat([columns["premise"][0], columns["hypothesis"][0]]).long()
    has_genres = any(t.genres is not None for t in parts)
    return NLITable(
        words=list(index),
        word_counts=torch.bincount(all_ids, minlength=len(index)),
        premise_ids=columns["premise"][0],
        premise_offsets=columns["premise"][1],
        premise_transitions=columns["premise"][2],
        hypothesis_ids=columns["hypothesis"][0],
        hypothesis_offsets=columns["hypothesis"][1],
        hypothesis_transitions=columns["hypothesis"][2],
        labels=torch.cat([t.labels for t in parts]),
        pair_ids=[pid for t in parts for pid in t.pair_ids],
        genres=[g for t in parts for g in (t.genres or [None] * len(t))] if has_genres else None,
        no_gold=sum(t.no_gold for t in parts),
        invalid=sum(t.invalid for t in parts),
        too_long=sum(t.too_long for t in parts),
    )
