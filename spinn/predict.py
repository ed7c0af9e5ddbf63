"""Label sentence pairs with a trained checkpoint.

    python scripts/predict.py --checkpoint runs/small --premise "A man plays a guitar." \\
        --hypothesis "A person makes music."
    python scripts/predict.py --checkpoint runs/small --input pairs.jsonl --output labels.jsonl

Each sentence is either a binary parse (``( ( A man ) ( plays ( a guitar ) ) )``: the text starts
with a ``(`` token and ends with a ``)`` token) or raw text, which `spinn.tokenize.tokenize` splits
into SNLI's Penn-Treebank-style tokens. The full SPINN parses every sentence itself (its predicted
transitions; ``--transitions given`` makes it follow given parses instead). SPINN-PI and SPINN-PI-NT
cannot parse: they follow given parses and read raw text as a balanced binary tree, with a warning.

Input files: ``.jsonl`` rows with ``sentence1``/``sentence2`` (or ``premise``/``hypothesis``), where
``sentence1_binary_parse``/``sentence2_binary_parse`` win when present; or ``.tsv``/``.txt`` with a
header row naming the same columns. Output: one JSON line per pair with the label, the probabilities
and the tree each sentence was read as.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from spinn import cli
from spinn.data.batching import NLIItem, collate_nli
from spinn.data.snli import LABELS, read_rows
from spinn.errors import ParseError, SpinnError, at
from spinn.evaluate import LoadedModel, load_model
from spinn.tokenize import tokenize
from spinn.transitions import balanced, parse_to_transitions, transitions_to_parse

#: Column names of the premise and of the hypothesis, in order of preference.
PREMISE_FIELDS = ("sentence1_binary_parse", "sentence1", "premise")
HYPOTHESIS_FIELDS = ("sentence2_binary_parse", "sentence2", "hypothesis")


@dataclass
class Sentence:
    """A sentence ready for the model: its words and the transitions of the tree it is read as."""

    text: str
    tokens: list[str]
    transitions: list[int]
    #: "given" (a binary parse) or "raw" (tokenised text, read as a balanced tree unless predicted).
    source: str


@dataclass
class Pair:
    premise: str
    hypothesis: str
    pair_id: str | None = None


def read_sentence(text: str, *, lowercase: bool, where: str) -> Sentence:
    """Tokenise raw text, or split a binary parse into words and transitions.

    Raises:
        SpinnError: an empty sentence, or a text that starts like a parse but is not a valid one.
    """
    items = text.split()
    if not items:
        raise SpinnError(f"{where}: empty sentence, expected raw text or a binary parse")
    if items[0] == "(" and items[-1] == ")":
        try:
            tokens, transitions = parse_to_transitions(text)
        except ParseError as err:
            raise ParseError(f"{where}: {err} (text starting with '( ' is read as a binary parse)") from None
        source = "given"
    else:
        tokens = tokenize(text)
        if not tokens:
            raise SpinnError(f"{where}: no words in {text!r}")
        transitions, source = balanced(len(tokens)), "raw"
    if lowercase:
        tokens = [t.lower() for t in tokens]
    return Sentence(text, tokens, [int(t) for t in transitions], source)


def read_pairs(path: Path) -> list[Pair]:
    """Read the pairs of a ``.jsonl`` or a ``.tsv``/``.txt`` (header row) file.

    Raises:
        SpinnError: a missing file, bad JSON, or a row without a premise or hypothesis column.
    """
    if not path.is_file():
        raise SpinnError(f"{path}: no such file")
    pairs = []
    for line_no, row in read_rows(path):
        sides = []
        for fields in (PREMISE_FIELDS, HYPOTHESIS_FIELDS):
            value = next((row[f] for f in fields if isinstance(row.get(f), str) and row[f].strip()), None)
            if value is None:
                names = ", ".join(fields)
                raise SpinnError(f"{at(str(path), line_no)}: expected a non-empty field among {names}")
            sides.append(value)
        pair_id = row.get("pairID")
        pairs.append(Pair(sides[0], sides[1], None if pair_id is None else str(pair_id)))
    if not pairs:
        raise SpinnError(f"{path}: no sentence pairs")
    return pairs


@torch.no_grad()
def predict(
    loaded: LoadedModel, pairs: list[Pair], *, device: torch.device, batch_size: int = 64
) -> Iterator[dict[str, Any]]:
    """Label `pairs` in batches; yield one record per pair, in order.

    Raises:
        SpinnError: an empty or malformed sentence (naming the pair).
    """
    model, vocab = loaded.model, loaded.vocab
    lowercase = loaded.config.data.lowercase
    predicts = model.variant == "spinn" and not model.eval_given_transitions
    raw = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        sentences = [
            (
                read_sentence(p.premise, lowercase=lowercase, where=f"pair {start + i + 1}: premise"),
                read_sentence(p.hypothesis, lowercase=lowercase, where=f"pair {start + i + 1}: hypothesis"),
            )
            for i, p in enumerate(chunk)
        ]
        for i, (a, b) in enumerate(sentences):
            for side, s in (("premise", a), ("hypothesis", b)):
                if not any(t in vocab for t in s.tokens):
                    raise SpinnError(
                        f"pair {start + i + 1}: {side}: none of its {len(s.tokens)} words is in the model's "
                        f"vocabulary ({' '.join(s.tokens[:8])}), expected at least one known word"
                    )
        items = [
            NLIItem(vocab.encode(a.tokens), a.transitions, vocab.encode(b.tokens), b.transitions, 0, str(i))
            for i, (a, b) in enumerate(sentences)
        ]
        out = model(collate_nli(items).to(device))
        probs = out.logits.float().softmax(dim=1).cpu()
        for i, (pair, (a, b)) in enumerate(zip(chunk, sentences, strict=True)):
            record: dict[str, Any] = {} if pair.pair_id is None else {"pairID": pair.pair_id}
            record["label"] = LABELS[int(probs[i].argmax())]
            record["probabilities"] = {
                name: round(float(p), 6) for name, p in zip(LABELS, probs[i], strict=True)
            }
            for name, s, side in (("premise", a, out.premise), ("hypothesis", b, out.hypothesis)):
                if predicts:
                    steps = side.predicted_transitions[i, : 2 * len(s.tokens) - 1].tolist()
                    tree, how = transitions_to_parse(s.tokens, steps), "predicted"
                else:
                    tree, how = transitions_to_parse(s.tokens, s.transitions), s.source
                    raw += how == "raw"
                record[name] = s.text
                record[f"{name}_tree"] = tree
                record[f"{name}_tree_source"] = "balanced" if how == "raw" else how
            yield record
    if raw:
        why = "with --transitions given" if model.variant == "spinn" else f"{model.variant} cannot parse"
        warnings.warn(
            f"{why}: {raw} raw-text sentence(s) were read as balanced binary trees; "
            "give binary parses (as in SNLI's sentence*_binary_parse) for the trees it was trained on",
            stacklevel=2,
        )


# ---------------------------------------------------------------------------------------------------
# Entry point: check the arguments, load the model and the pairs, predict, write.
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Label premise/hypothesis pairs with a spinn checkpoint.",
        epilog='example: python scripts/predict.py --checkpoint runs/small --premise "A dog runs." '
        '--hypothesis "An animal moves."',
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder (its best.pt)")
    parser.add_argument("--premise", help="raw text or a binary parse")
    parser.add_argument("--hypothesis", help="raw text or a binary parse")
    parser.add_argument("--input", help="a .jsonl or .tsv file of pairs instead of --premise/--hypothesis")
    parser.add_argument("--output", help="write JSON lines here instead of to stdout")
    parser.add_argument(
        "--transitions",
        choices=("predicted", "given"),
        default="predicted",
        help="full SPINN only: parse with its own predicted transitions (default), or follow given parses",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per batch (default 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    return parser


def run_predict(args: argparse.Namespace) -> int:
    if args.input is None and (args.premise is None or args.hypothesis is None):
        raise SpinnError("give --premise and --hypothesis, or --input FILE")
    if args.input is not None and (args.premise is not None or args.hypothesis is not None):
        raise SpinnError("give either --input FILE or --premise/--hypothesis, not both")
    if args.batch_size < 1:
        raise SpinnError(f"--batch-size: expected a value > 0, found {args.batch_size}")
    device = cli.resolve_device(args.device)
    loaded = load_model(args.checkpoint, device)
    if loaded.model.variant == "spinn":
        loaded.model.eval_given_transitions = args.transitions == "given"
    pairs = read_pairs(Path(args.input)) if args.input else [Pair(args.premise, args.hypothesis)]
    records = predict(loaded, pairs, device=device, batch_size=args.batch_size)
    if args.output is None:
        _write(records, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            _write(records, f)
        print(f"{len(pairs)} prediction(s): {args.output}", file=sys.stderr)
    return 0


def _write(records: Iterator[dict[str, Any]], f: TextIO) -> None:
    for record in records:
        f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_predict, argv)
