"""Readers for SNLI 1.0 and MultiNLI 1.0: sentence pairs with binary parses and gold labels.

Formats (each optionally gzip-compressed, ``.gz``):

* ``.jsonl``: one JSON object per line (SNLI 1.0, MultiNLI 1.0, and SICK rendered in that form).
* ``.txt``: tab-separated with a header line naming the columns (SNLI 1.0, MultiNLI 1.0).

Fields used: ``gold_label``, ``sentence1_binary_parse``, ``sentence2_binary_parse`` (required),
``pairID`` (optional; the line number stands in where it is absent) and ``genre`` (MultiNLI only).
Rows whose gold label is ``-`` (no annotator majority) are skipped and counted in ``NLIData.no_gold``.

Checks beyond the parse itself (each failure names the file, line and field):

* Where a row also has the full constituency parse ``sentence{1,2}_parse`` (SNLI and MultiNLI do;
  SICK does not), its number of leaves must equal the number of words of the binary parse: both come
  from the same tokenisation, so a difference means a damaged or shifted row. Leaves are counted as
  the parse's items that open no bracket (brackets in the text are written ``-LRB-``/``-RRB-``).
  This holds on every row of the SNLI 1.0 dev file and the 1% train sample in the shared data.
* The words of each binary parse must be those of the row's ``sentence1``/``sentence2`` text, where the
  row has it, compared without spaces and ASCII punctuation (tokenisers write quotes and brackets
  their own way: ``-LRB-``, ``` `` ```); a difference means a damaged or shifted row. This holds on every
  row of the SNLI and SICK files in the shared data. With ``check_text=False`` (for corpora whose
  tokenisation changes the words) such pairs are kept and counted in ``NLIData.text_differs``.
* The text must be UTF-8. A UTF-8 byte-order mark at the start of the file (as some Windows editors
  write) is accepted and ignored; it carries no information and the official files have none.
* A file with no rows at all is an error; a file whose rows are all skipped returns no examples, and
  the caller that needs a split decides (`spinn.evaluate.read_table` refuses an empty split).
* Sentence length: with ``max_length`` set, a pair with a sentence of more words is, by ``too_long``,
  an error (``"error"``, the default), skipped and counted (``"skip"``), or cut to its first
  ``max_length`` words (``"truncate"``): the parse keeps every constituent that lies within those
  words, and what is left open on the stack is joined right to left, so the result is still one
  binary tree. Skipped and truncated pairs are counted in ``NLIData.too_long``.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import math
import re
import string
import sys
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spinn.errors import ParseError, SpinnError, at
from spinn.io import check_readable, open_input, read_lines
from spinn.transitions import REDUCE, SHIFT, parse_to_transitions

LABELS = ("entailment", "neutral", "contradiction")
_LABEL_IDS = {name: i for i, name in enumerate(LABELS)}
NO_GOLD = "-"
REQUIRED_FIELDS = ("gold_label", "sentence1_binary_parse", "sentence2_binary_parse")
#: How many reasons for skipped rows are kept and printed when ``skip_invalid`` is set.
MAX_REASONS = 5
#: What happens to a pair with a sentence over ``max_length`` words; see the module docstring.
TOO_LONG_POLICIES = ("error", "skip", "truncate")
_BOM = b"\xef\xbb\xbf"
#: The tokens treebanks write for brackets in the text (-LRB-, -RSB-, ...), lower-cased or not.
_BRACKET_TOKENS = re.compile(r"-[lr][rsc]b-", re.IGNORECASE)
_NOT_COMPARED = (string.punctuation + string.whitespace).encode()
_PROGRESS_EVERY = 8192


@dataclass
class NLIExample:
    """One labelled sentence pair; transitions are `spinn.transitions.Transition` values as ints.

    A single sentence to classify (`spinn.data.classify`) is a premise with no hypothesis (None).
    """

    pair_id: str
    premise: list[str]
    premise_transitions: list[int]
    hypothesis: list[str] | None
    hypothesis_transitions: list[int] | None
    label: int
    genre: str | None = None


@dataclass
class NLIData:
    """The examples of one file and what was left out of them."""

    path: Path
    examples: list[NLIExample]
    no_gold: int = 0
    invalid: int = 0
    #: Pairs skipped or truncated for a sentence over ``max_length`` words.
    too_long: int = 0
    #: Pairs kept whose parse words differ from their sentence text (``check_text=False``).
    text_differs: int = 0
    #: The first `MAX_REASONS` reasons for rows skipped as invalid.
    invalid_reasons: list[str] = field(default_factory=list)

    def skip_invalid(self, err: SpinnError) -> None:
        """Count a row skipped for `err`, keeping the first `MAX_REASONS` reasons to report."""
        self.invalid += 1
        if len(self.invalid_reasons) < MAX_REASONS:
            self.invalid_reasons.append(str(err))

    def report_invalid(self, unit: str) -> None:
        """Print on stderr how many ``unit`` (row, line) were skipped as invalid, and the first reasons."""
        if self.invalid:
            print(f"{self.path}: skipped {self.invalid} invalid {unit}(s); first reasons:", file=sys.stderr)
            for reason in self.invalid_reasons:
                print(f"  {reason}", file=sys.stderr)


def read_nli(
    path: str | Path,
    *,
    lowercase: bool = False,
    skip_invalid: bool = False,
    progress: bool = True,
    byte_range: tuple[int, int] | None = None,
    first_line: int = 1,
    max_length: int | None = None,
    too_long: str = "error",
    limit: int | None = None,
    check_text: bool = True,
) -> NLIData:
    """Read an SNLI/MultiNLI ``.jsonl`` or ``.txt`` file (optionally ``.gz``).

    Args:
        path: the file; its suffix (before an optional ``.gz``) selects the format.
        lowercase: lower-case every token (for the lower-case GloVe 6B and 42B vectors).
        skip_invalid: skip rows with bad JSON, a missing field, an unknown label or an invalid parse,
            counting them in ``NLIData.invalid`` and printing the first few reasons, instead of raising.
        progress: show a tqdm progress bar (by bytes read).
        byte_range: read only the lines in [start, end) of an uncompressed ``.jsonl`` file, both ends
            at line starts (for reading one file in several processes); ``first_line`` is the line
            number at ``start``, for messages.
        max_length: the most words a sentence may have; None: no limit.
        too_long: what to do with a pair over ``max_length``: ``"error"``, ``"skip"`` (counted in
            ``NLIData.too_long``) or ``"truncate"`` (also counted); see the module docstring.
        limit: stop after this many pairs (the counts of left-out rows then cover the rows read);
            None: read the whole file.
        check_text: refuse a pair whose parse words differ from its sentence text (see the module
            docstring); False: keep it and count it in ``NLIData.text_differs``.

    Raises:
        SpinnError: the file is missing, empty, unreadable (a truncated ``.gz``) or of an unknown
            format, or (without ``skip_invalid``) a row is invalid; the message names the file, line
            and field.
    """
    path = check_readable(path, "file")
    suffix = _nli_format(path, byte_range is not None)
    _check_policy(max_length, too_long, limit)
    lines = _lines(path, progress, byte_range or (0, None), first_line)
    rows = _jsonl_rows(path, lines) if suffix == ".jsonl" else _tsv_rows(path, lines)

    data = NLIData(path=path, examples=[])
    # Closing the lines closes the progress bar now, not when the generator is collected: an error
    # raised while reading then starts on a line of its own.
    with gc_paused(), contextlib.closing(lines):
        _read_rows(rows, path, (lowercase, skip_invalid, check_text), (max_length, too_long, limit), data)
    if byte_range is None and not (data.examples or data.no_gold or data.invalid or data.too_long):
        raise SpinnError(f"{path}: empty file, expected one sentence pair per line")
    _report_left_out(data, max_length, too_long)
    return data


def _nli_format(path: Path, byte_range: bool) -> str:
    """The format suffix of an NLI file, ``.jsonl`` or ``.txt`` (before an optional ``.gz``)."""
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if suffix not in (".jsonl", ".txt"):
        raise SpinnError(f"{path}: unknown format {suffix!r}, expected .jsonl or .txt (optionally .gz)")
    if byte_range and (suffix != ".jsonl" or path.suffix == ".gz"):
        raise SpinnError(f"{path}: byte_range needs an uncompressed .jsonl file")
    return suffix


def _check_policy(max_length: int | None, too_long: str, limit: int | None) -> None:
    if max_length is not None and max_length < 1:
        raise SpinnError(f"max_length must be >= 1 word or None, found {max_length}")
    if too_long not in TOO_LONG_POLICIES:
        raise SpinnError(f"too_long must be one of {', '.join(TOO_LONG_POLICIES)}; found {too_long!r}")
    if limit is not None and limit < 1:
        raise SpinnError(f"limit must be >= 1 pair or None, found {limit}")


def _report_left_out(data: NLIData, max_length: int | None, too_long: str) -> None:
    """Tell on stderr what was skipped, truncated or kept unchecked: a user should know their data shrank."""
    path = data.path
    if data.too_long:
        done = "skipped" if too_long == "skip" else "truncated"
        print(
            f"{path}: {done} {data.too_long} pair(s) with a sentence over {max_length} words", file=sys.stderr
        )
    if data.text_differs:
        print(
            f"{path}: kept {data.text_differs} pair(s) whose parse words differ from their sentence text "
            f"(check_text is off)",
            file=sys.stderr,
        )
    data.report_invalid("row")


def read_rows(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each row of a ``.jsonl`` file or of a tab-separated ``.tsv``/``.txt`` file
    with a header line (``required`` names the columns it must have), read as `read_nli` reads them:
    UTF-8, a byte-order mark dropped, blank lines skipped, no progress bar.

    Raises:
        SpinnError: an unknown suffix, or the first row that is not UTF-8, not JSON or not a JSON object.
    """
    if path.suffix not in (".jsonl", ".tsv", ".txt"):
        raise SpinnError(f"{path}: unknown format {path.suffix!r}, expected .jsonl, .tsv or .txt")
    lines = _lines(path, False, (0, None), 1)
    rows = _jsonl_rows(path, lines) if path.suffix == ".jsonl" else _tsv_rows(path, lines, required)
    for line_no, row in rows:
        if isinstance(row, SpinnError):
            raise row
        yield line_no, row


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of small lists are made: it would otherwise
    rescan the growing heap again and again (a third of the reading time), though none is garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_rows(
    rows: Iterator[tuple[int, dict | SpinnError]],
    path: Path,
    checks: tuple[bool, bool, bool],
    length_policy: tuple[int | None, str, int | None],
    data: NLIData,
) -> None:
    lowercase, skip_invalid, check_text = checks
    max_length, too_long, limit = length_policy
    for line_no, row in rows:
        if len(data.examples) == limit:
            return
        try:
            example = _example(row, path, line_no, lowercase)
            differs = example is not None and _text_differs(row, example, lowercase)
            if differs and check_text:
                raise ParseError(
                    f"{at(str(path), line_no, differs + '_binary_parse')}: its words differ from field "
                    f"{differs!r} of the same row (compared without spaces and punctuation), expected the "
                    f"same sentence (set data.check_text=false to keep such pairs and count them)"
                )
            over = example is not None and max_length is not None and _over_length(example, max_length)
            if over and too_long == "error":
                name, n = over
                raise SpinnError(
                    f"{at(str(path), line_no, name)}: {n} words, more than max_length={max_length} "
                    f"(raise max_length, or set too_long to 'skip' or 'truncate')"
                )
        except SpinnError as err:
            if not skip_invalid:
                raise
            data.skip_invalid(err)
            continue
        if example is None:
            data.no_gold += 1
            continue
        data.text_differs += bool(differs)
        if over:
            data.too_long += 1
            if too_long == "skip":
                continue
            _truncate(example, max_length)
        data.examples.append(example)


def _text_differs(row: dict, example: NLIExample, lowercase: bool) -> str | None:
    """The first of sentence1/sentence2 whose text has other words than the example's parse (compared
    without spaces, ASCII punctuation and bracket tokens); None when both agree or the row has no text."""
    for name, tokens in (("sentence1", example.premise), ("sentence2", example.hypothesis)):
        text = row.get(name)
        if not isinstance(text, str):
            continue
        words = "".join(tokens)
        if "-" in words:
            words = _BRACKET_TOKENS.sub("", words)
        if lowercase:
            text = text.lower()
        # bytes.translate runs in C: 8x faster than str.translate. UTF-8 never puts ASCII bytes inside
        # another character, so deleting them leaves the other characters whole.
        if words.encode().translate(None, _NOT_COMPARED) != text.encode().translate(None, _NOT_COMPARED):
            return name
    return None


def _over_length(example: NLIExample, max_length: int) -> tuple[str, int] | None:
    """(field, words) of the first sentence over `max_length` words; None when both fit."""
    for name, tokens in zip(REQUIRED_FIELDS[1:], (example.premise, example.hypothesis), strict=True):
        if len(tokens) > max_length:
            return name, len(tokens)
    return None


def _truncate(example: NLIExample, max_length: int) -> None:
    """Cut both sentences of `example` to their first `max_length` words, in place."""
    example.premise_transitions = truncate_transitions(example.premise_transitions, max_length)
    example.premise = example.premise[:max_length]
    example.hypothesis_transitions = truncate_transitions(example.hypothesis_transitions, max_length)
    example.hypothesis = example.hypothesis[:max_length]


def truncate_transitions(transitions: list[int], n_words: int) -> list[int]:
    """The transitions of the tree over the first `n_words` words of a valid sequence.

    Every REDUCE before the next SHIFT is kept (each builds a constituent within those words); the
    items still on the stack are then joined by REDUCEs, right to left. A sequence of at most
    `n_words` SHIFTs comes back unchanged.
    """
    out: list[int] = []
    depth = shifts = 0
    for t in transitions:
        if t == SHIFT:
            if shifts == n_words:
                break
            shifts += 1
            depth += 1
        else:
            depth -= 1
        out.append(t)
    return out + [REDUCE] * (depth - 1)


def _example(row: dict | SpinnError, path: Path, line: int, lowercase: bool) -> NLIExample | None:
    """Build the example of one row; None for a row without a gold label."""
    if isinstance(row, SpinnError):
        raise row
    for name in REQUIRED_FIELDS:
        if not isinstance(row.get(name), str):
            found = "nothing" if row.get(name) is None else repr(row[name])
            raise SpinnError(f"{at(str(path), line, name)}: expected a string, found {found}")
    gold = row["gold_label"]
    if gold == NO_GOLD:
        return None
    label = _LABEL_IDS.get(gold)
    if label is None:
        raise SpinnError(
            f"{at(str(path), line, 'gold_label')}: unknown label {gold!r}, expected one of "
            f"{', '.join(LABELS)} or {NO_GOLD!r}"
        )
    sentences = []
    for name in REQUIRED_FIELDS[1:]:
        try:
            tokens, transitions = parse_to_transitions(row[name])
        except ParseError as err:
            raise ParseError(f"{at(str(path), line, name)}: {err}") from None
        full_name = name.replace("_binary_parse", "_parse")
        full = row.get(full_name)
        # Counting spaces assumes single spaces, as in the official files, and is 5x faster than
        # splitting; a mismatch is confirmed by splitting before it is reported.
        if (
            isinstance(full, str)
            and full.count(" ") + 1 - full.count("(") != len(tokens)
            and _leaves(full) != len(tokens)
        ):
            raise ParseError(
                f"{at(str(path), line, name)}: {len(tokens)} words, but field {full_name!r} of the same "
                f"row has {_leaves(full)} leaves; expected the same tokens in both parses"
            )
        if lowercase:
            tokens = [t.lower() for t in tokens]
        sentences.append((tokens, transitions))
    (premise, premise_trans), (hypothesis, hypothesis_trans) = sentences
    pair_id = row.get("pairID")
    genre = row.get("genre")
    return NLIExample(
        pair_id=str(pair_id) if pair_id is not None else f"{path.name}:{line}",
        premise=premise,
        premise_transitions=premise_trans,
        hypothesis=hypothesis,
        hypothesis_transitions=hypothesis_trans,
        label=label,
        genre=str(genre) if genre is not None else None,
    )


def _leaves(parse: str) -> int:
    """The number of words in a constituency parse such as ``(ROOT (S (NP (DT A) (NN dog)) ...))``: its
    items that open no bracket (the parses write brackets in the text as -LRB-/-RRB-)."""
    return len(parse.split()) - parse.count("(")


def _lines(
    path: Path, progress: bool, byte_range: tuple[int, int | None], first_line: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw line) with a progress bar over the bytes of the file on disk."""
    start, end = byte_range
    with open_input(path, "data file") as raw:
        raw.seek(start)
        stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        stop = math.inf if end is None else end
        total = (path.stat().st_size if end is None else end) - start
        # No bar object at all without progress: reading in forked workers must not touch tqdm's lock.
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=path.name) if progress else None
        line_no = first_line - 1
        try:
            pos = start
            for line_no, line in read_lines(stream, str(path), first_line):
                if pos >= stop:
                    break
                if pos == 0 and line.startswith(_BOM):
                    pos += len(_BOM)
                    line = line[len(_BOM) :]
                pos += len(line)
                # Updating the bar every line costs more than the parsing; update it in steps instead.
                if bar is not None and line_no % _PROGRESS_EVERY == 0:
                    bar.update(raw.tell() - start - bar.n)
                yield line_no, line
        except (EOFError, OSError, zlib.error) as err:
            raise SpinnError(
                f"{path}: cannot read past line {line_no} ({err}); expected a complete file, is it truncated?"
            ) from None
        else:
            if bar is not None:
                bar.update(min(raw.tell() - start, total) - bar.n)
        finally:
            if bar is not None:
                bar.close()


def _jsonl_rows(path: Path, lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, dict | SpinnError]]:
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except UnicodeDecodeError as err:
            yield line_no, _not_utf8(path, line_no, line, err)
            continue
        except json.JSONDecodeError as err:
            yield line_no, SpinnError(f"{at(str(path), line_no)}: bad JSON ({err})")
            continue
        if not isinstance(row, dict):
            row = SpinnError(f"{at(str(path), line_no)}: expected a JSON object, found {type(row).__name__}")
        yield line_no, row


def _tsv_rows(
    path: Path, lines: Iterator[tuple[int, bytes]], required: Sequence[str] = REQUIRED_FIELDS
) -> Iterator[tuple[int, dict | SpinnError]]:
    header: list[str] | None = None
    for line_no, line in lines:
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            yield line_no, _not_utf8(path, line_no, line, err)
            continue
        if header is None:
            header = text.split("\t")
            missing = [name for name in required if name not in header]
            if missing:
                raise SpinnError(
                    f"{at(str(path), line_no)}: header lacks column(s) {', '.join(missing)}; "
                    f"found {', '.join(header)}"
                )
            continue
        if not text.strip():
            continue
        # Short rows leave trailing columns absent, which the field check reports by name.
        yield line_no, dict(zip(header, text.split("\t"), strict=False))
    if header is None:
        raise SpinnError(f"{path}: empty file, expected a header line")


def _not_utf8(path: Path, line_no: int, line: bytes, err: UnicodeDecodeError) -> SpinnError:
    return SpinnError(
        f"{at(str(path), line_no)}: expected UTF-8 text, found byte {line[err.start]:#04x} at byte "
        f"{err.start + 1} of the line ({err.reason})"
    )
