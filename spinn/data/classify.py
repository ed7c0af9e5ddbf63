"""Readers for single-sentence classification: Stanford Sentiment Treebank trees and labelled TSV.

Formats (UTF-8, one example a line; blank lines are skipped):

* ``sst``: Penn-Treebank-style trees with a label at every node, as the Stanford Sentiment Treebank
  ships them (``train.txt``, ``dev.txt``, ``test.txt``)::

      (3 (2 It) (4 (2 's) (3 good)))

  The example's label is the root's. ``binary`` labels drop sentences labelled 2 (neutral) and map
  0-1 to negative and 3-4 to positive; ``fine`` keeps the five classes. Trees must be binary. The
  treebank escapes ``/`` and ``*`` as ``\\/`` and ``\\*`` (unescaped here, as GloVe writes them) and
  writes brackets of the text as ``-LRB-``/``-RRB-`` (kept). A leaf that holds several words
  (``(2 8 1\\/2)``) becomes those words, bracketed right-branching.
  With ``phrases``, every node of every tree is an example of its own (its subtree and its label),
  each distinct (words, tree, label) once: the treebank's phrase-level supervision.
* ``tsv``: ``label<TAB>binary parse``, the released ListOps files' format, where the label is a class
  id 0 .. ``num_classes`` - 1 and the parse is read by `spinn.transitions.parse_to_transitions`.

Each example is an `spinn.data.snli.NLIExample` with the sentence as its premise and no hypothesis:
the batches then hold one `spinn.data.batching.Sentences` side. Sentences left out (neutral ones in
binary mode) are counted in ``NLIData.no_gold``. The length policy (``max_length``, ``too_long``),
``skip_invalid`` and ``limit`` work as in `spinn.data.snli.read_nli`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spinn.data.snli import TOO_LONG_POLICIES, NLIData, NLIExample, truncate_transitions
from spinn.errors import ParseError, SpinnError, at
from spinn.io import check_readable, open_input, read_lines
from spinn.transitions import REDUCE, parse_to_transitions, right_branching

FORMATS = ("sst", "tsv")
SST_LABELS = {
    "binary": ("negative", "positive"),
    "fine": ("very negative", "negative", "neutral", "positive", "very positive"),
}
#: The root label of a neutral sentence, dropped in binary mode; each label's binary class otherwise.
SST_NEUTRAL = 2
SST_BINARY_CLASS = {0: 0, 1: 0, 3: 1, 4: 1}
_SST_ITEM = re.compile(r"\(|\)|[^\s()]+")

#: The examples of one line (text, where for messages, id): one, or many (phrases); None for a
#: sentence left out for its label.
LineReader = Callable[[str, str, str], "list[NLIExample] | None"]


def label_names(fmt: str, sst_labels: str = "binary", num_classes: int = 10) -> tuple[str, ...]:
    """The class names of a classification data set, in class-id order (TSV classes are their ids)."""
    if fmt == "sst":
        return SST_LABELS[sst_labels]
    return tuple(str(i) for i in range(num_classes))


def read_classify(
    path: str | Path,
    *,
    fmt: str,
    sst_labels: str = "binary",
    num_classes: int = 10,
    phrases: bool = False,
    lowercase: bool = False,
    skip_invalid: bool = False,
    max_length: int | None = None,
    too_long: str = "error",
    limit: int | None = None,
) -> NLIData:
    """Read an SST tree file or a ``label<TAB>binary parse`` file (see the module docstring).

    Args:
        fmt: ``"sst"`` or ``"tsv"``.
        sst_labels: ``"binary"`` or ``"fine"`` (SST only).
        num_classes: the labels a TSV file may hold are 0 .. num_classes - 1.
        phrases: SST only: every labelled node is an example (for training).

    Raises:
        SpinnError: the file is missing, empty or not UTF-8, or (without ``skip_invalid``) a line is
            malformed; the message names the file and line, what was expected and what was found.
    """
    path = Path(path)
    reader = _line_reader(
        path, fmt, too_long, sst_labels=sst_labels, num_classes=num_classes, phrases=phrases
    )
    data = NLIData(path=path, examples=[])
    seen: set[tuple] = set()
    for line_no, text in _lines(path):
        if limit is not None and len(data.examples) >= limit:
            break
        where = at(str(path), line_no)
        try:
            examples = reader(text, where, f"{path.name}:{line_no}")
            if examples is not None:
                examples = [_fit(ex, where, max_length, too_long, data) for ex in examples]
        except SpinnError as err:
            if not skip_invalid:
                raise
            data.skip_invalid(err)
            continue
        if examples is None:
            data.no_gold += 1
            continue
        _add(examples, data, seen if phrases else None, lowercase)
    if limit is not None:
        del data.examples[limit:]  # a tree's phrases can overshoot the limit
    if not (data.examples or data.no_gold or data.invalid or data.too_long):
        raise SpinnError(f"{path}: empty file, expected {_describe(fmt)}")
    data.report_invalid("line")
    return data


def _line_reader(
    path: Path, fmt: str, too_long: str, *, sst_labels: str, num_classes: int, phrases: bool
) -> LineReader:
    """The reader of one line of ``fmt``, once the options and the file are checked."""
    if fmt not in FORMATS:
        raise SpinnError(f"{path}: unknown format {fmt!r}, expected one of {', '.join(FORMATS)}")
    check_readable(path, f"file ({_describe(fmt)})")
    if too_long not in TOO_LONG_POLICIES:
        raise SpinnError(f"too_long must be one of {', '.join(TOO_LONG_POLICIES)}; found {too_long!r}")
    if fmt == "tsv":
        return functools.partial(_tsv_examples, num_classes=num_classes)
    if sst_labels not in SST_LABELS:
        raise SpinnError(f"sst_labels must be one of {', '.join(SST_LABELS)}; found {sst_labels!r}")
    return functools.partial(_sst_examples, sst_labels=sst_labels, phrases=phrases)


def _add(examples: list[NLIExample | None], data: NLIData, seen: set[tuple] | None, lowercase: bool) -> None:
    """Append the examples of one line that were not skipped for their length, lower-cased if asked;
    with `seen` (phrases), only those not seen before."""
    for ex in examples:
        if ex is None:
            continue
        if lowercase:
            ex.premise = [w.lower() for w in ex.premise]
        if seen is not None:
            key = (tuple(ex.premise), tuple(ex.premise_transitions), ex.label)
            if key in seen:
                continue
            seen.add(key)
        data.examples.append(ex)


def _describe(fmt: str) -> str:
    return "one labelled PTB-style tree a line" if fmt == "sst" else "one 'label<TAB>binary parse' a line"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; a UTF-8 byte-order mark is dropped."""
    with open_input(path) as f:
        for line_no, raw in read_lines(f, str(path)):
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise SpinnError(
                    f"{at(str(path), line_no)}: expected UTF-8 text, found byte {raw[err.start]:#04x} "
                    f"at byte {err.start + 1} of the line ({err.reason})"
                ) from None
            if text.strip():
                yield line_no, text


def _fit(
    ex: NLIExample, where: str, max_length: int | None, too_long: str, data: NLIData
) -> NLIExample | None:
    """Apply the length policy: the example, the example cut to `max_length` words, or None (skipped)."""
    if max_length is None or len(ex.premise) <= max_length:
        return ex
    if too_long == "error":
        raise SpinnError(
            f"{where}: {len(ex.premise)} words, more than max_length={max_length} "
            f"(raise max_length, or set too_long to 'skip' or 'truncate')"
        )
    data.too_long += 1
    if too_long == "skip":
        return None
    ex.premise_transitions = truncate_transitions(ex.premise_transitions, max_length)
    ex.premise = ex.premise[:max_length]
    return ex


def _tsv_examples(text: str, where: str, ex_id: str, *, num_classes: int) -> list[NLIExample]:
    label, tab, parse = text.partition("\t")
    if not tab:
        raise SpinnError(f"{where}: expected 'label<TAB>binary parse', found no tab in {text[:60]!r}")
    if not (label.strip().isdigit() and int(label) < num_classes):
        raise SpinnError(
            f"{where}: label {label!r}: expected a class id 0 to {num_classes - 1} (data.num_classes)"
        )
    try:
        tokens, transitions = parse_to_transitions(parse)
    except ParseError as err:
        raise ParseError(f"{where}: {err}") from None
    return [NLIExample(ex_id, tokens, [int(t) for t in transitions], None, None, int(label))]


def _sst_examples(
    text: str, where: str, ex_id: str, *, sst_labels: str, phrases: bool
) -> list[NLIExample] | None:
    """The root's example (None when binary mode leaves it out), or with `phrases` every node's."""
    nodes = _sst_nodes(text, where)  # post-order: the root last
    root_label = nodes[-1][0]
    if not phrases and sst_labels == "binary" and root_label == SST_NEUTRAL:
        return None
    out = []
    for i, (label, words, transitions) in enumerate(nodes if phrases else nodes[-1:]):
        if sst_labels == "binary":
            if label == SST_NEUTRAL:
                continue
            label = SST_BINARY_CLASS[label]
        node_id = ex_id if i == len(nodes) - 1 or not phrases else f"{ex_id}:{i}"
        out.append(NLIExample(node_id, words, transitions, None, None, label))
    return out


@dataclass
class _OpenNode:
    """A bracket of an SST tree being read: its label, its words or its children's (words, transitions)."""

    label: int
    words: list[str] = field(default_factory=list)
    children: list[tuple[list[str], list[int]]] = field(default_factory=list)


def _sst_nodes(text: str, where: str) -> list[tuple[int, list[str], list[int]]]:
    """(label, words, transitions) of every node of one tree, children before their parent."""
    items = _SST_ITEM.findall(text)
    nodes: list[tuple[int, list[str], list[int]]] = []
    stack: list[_OpenNode] = []
    pos = 0
    while pos < len(items):
        item = items[pos]
        if nodes and not stack:
            raise SpinnError(f"{where}: item {pos + 1}: text after the tree's closing bracket")
        if item == "(":
            label = items[pos + 1] if pos + 1 < len(items) else "nothing"
            if label not in ("0", "1", "2", "3", "4"):
                raise SpinnError(f"{where}: item {pos + 2}: expected a label 0-4 after '(', found {label!r}")
            if stack and stack[-1].words:
                raise SpinnError(f"{where}: item {pos + 1}: a node holds both words and subtrees")
            stack.append(_OpenNode(int(label)))
            pos += 2
            continue
        if not stack:
            what = "')' closes no bracket" if item == ")" else f"expected '(' to open a tree, found {item!r}"
            raise SpinnError(f"{where}: item {pos + 1}: {what}")
        if item == ")":
            node = stack.pop()
            words, transitions = _subtree(node, f"{where}: item {pos + 1}")
            nodes.append((node.label, words, transitions))
            if stack:
                stack[-1].children.append((words, transitions))
        elif stack[-1].children:
            raise SpinnError(f"{where}: item {pos + 1}: a node holds both words and subtrees")
        else:
            stack[-1].words.append(item.replace("\\/", "/").replace("\\*", "*"))
        pos += 1
    if stack or not nodes:
        raise SpinnError(
            f"{where}: expected one complete tree such as '(3 (2 It) (4 good))', found {text[:60]!r}"
        )
    return nodes


def _subtree(node: _OpenNode, where: str) -> tuple[list[str], list[int]]:
    """The words and transitions of a closed node: its words right-branching, or its two children."""
    if node.words:
        return node.words, [int(t) for t in right_branching(len(node.words))]
    if len(node.children) != 2:
        raise SpinnError(
            f"{where}: the node closed here has {len(node.children)} children, expected 2 (a binary tree) "
            "or words"
        )
    (left_words, left_trans), (right_words, right_trans) = node.children
    return left_words + right_words, left_trans + right_trans + [int(REDUCE)]
