"""Label sentence pairs (or, with a classify checkpoint, single sentences) with a trained checkpoint.

    python scripts/predict.py --checkpoint runs/small --premise "A man plays a guitar." \\
        --hypothesis "A person makes music."
    python scripts/predict.py --checkpoint runs/small --input pairs.jsonl --output labels.jsonl
    python scripts/predict.py --checkpoint runs/sst_binary_spinn_pi_nt --sentence "A lovely film ."

Each sentence is either a binary parse (``( ( A man ) ( plays ( a guitar ) ) )``: the text starts
with a ``(`` token and ends with a ``)`` token) or raw text, which `spinn.tokenize.tokenize` splits
into SNLI's Penn-Treebank-style tokens. The full SPINN parses every sentence itself (its predicted
transitions; ``--transitions given`` makes it follow given parses instead). SPINN-PI and SPINN-PI-NT
cannot parse: they follow given parses and read raw text as a balanced binary tree, with a warning.

Input files: ``.jsonl`` rows with ``sentence1``/``sentence2`` (or ``premise``/``hypothesis``), where
``sentence1_binary_parse``/``sentence2_binary_parse`` win when present; or ``.tsv``/``.txt`` with a
header row naming the same columns; for a classify checkpoint the column is ``sentence_binary_parse``
or ``sentence``. Output: one JSON line per pair (or sentence) with the label, the probabilities and
the tree each sentence was read as.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from spinn import cli
from spinn.config import class_names
from spinn.data.batching import NLIItem, collate_nli
from spinn.data.snli import read_rows
from spinn.data.vocab import Vocab
from spinn.errors import ParseError, SpinnError, at
from spinn.evaluate import LoadedModel, load_model
from spinn.io import atomic_write, check_readable, to_json
from spinn.tokenize import tokenize
from spinn.transitions import TRIVIAL_TREES, balanced, parse_to_transitions, transitions_to_parse

#: How the full SPINN reads a sentence: parsed by itself, or along the given binary parse.
TRANSITIONS = ("predicted", "given")
#: Column names of the premise and of the hypothesis, in order of preference.
PREMISE_FIELDS = ("sentence1_binary_parse", "sentence1", "premise")
HYPOTHESIS_FIELDS = ("sentence2_binary_parse", "sentence2", "hypothesis")
#: The column of the sentence to classify (task classify).
SENTENCE_FIELDS = ("sentence_binary_parse", "sentence")


@dataclass
class Sentence:
    """A sentence ready for the model: its words and the transitions of the tree it is read as."""

    text: str
    tokens: list[str]
    transitions: list[int]
    #: "given" (a binary parse) or "raw" (tokenised text, read as a balanced tree unless predicted);
    #: left, right or balanced for a model trained on trivial trees (``data.transitions``).
    source: str


@dataclass
class Pair:
    """A pair to label; a single sentence to classify is a premise without hypothesis."""

    premise: str
    hypothesis: str | None
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


def read_pairs(path: Path, *, single: bool = False) -> list[Pair]:
    """Read the pairs (with `single`, the sentences) of a ``.jsonl`` or a ``.tsv``/``.txt`` (header
    row) file.

    Raises:
        SpinnError: a missing file, bad JSON, or a row without a premise or hypothesis column.
    """
    check_readable(path, "file of sentence pairs")
    pairs = []
    for line_no, row in read_rows(path):
        sides = []
        for fields in (SENTENCE_FIELDS,) if single else (PREMISE_FIELDS, HYPOTHESIS_FIELDS):
            value = next((row[f] for f in fields if isinstance(row.get(f), str) and row[f].strip()), None)
            if value is None:
                names = ", ".join(fields)
                raise SpinnError(f"{at(str(path), line_no)}: expected a non-empty field among {names}")
            sides.append(value)
        pair_id = row.get("pairID")
        pairs.append(
            Pair(sides[0], sides[-1] if len(sides) == 2 else None, None if pair_id is None else str(pair_id))
        )
    if not pairs:
        raise SpinnError(f"{path}: no sentences" if single else f"{path}: no sentence pairs")
    return pairs


@dataclass
class Prediction:
    """The label of one pair (or single sentence), its class probabilities, and the tree each sentence
    was read as.

    A tree is a binary parse such as ``( ( a dog ) runs )``; its source is ``"given"`` (the text was
    a binary parse), ``"predicted"`` (the full SPINN's own transitions), ``"balanced"`` (raw text read
    as a balanced tree by a model that cannot parse), or the trivial tree a model was trained on
    (``data.transitions``). A single sentence to classify is a premise without hypothesis.
    """

    label: str
    #: Class name -> probability, in the order of the model's classes.
    probabilities: dict[str, float]
    premise: str
    premise_tree: str
    premise_tree_source: str
    hypothesis: str | None = None
    hypothesis_tree: str | None = None
    hypothesis_tree_source: str | None = None
    pair_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON line ``scripts/predict.py`` writes (probabilities rounded to 6 places); a single
        sentence is named ``sentence``."""
        record: dict[str, Any] = {} if self.pair_id is None else {"pairID": self.pair_id}
        record["label"] = self.label
        record["probabilities"] = {name: round(p, 6) for name, p in self.probabilities.items()}
        single = self.hypothesis is None
        for side in ("premise",) if single else ("premise", "hypothesis"):
            name = "sentence" if single else side
            for suffix in ("", "_tree", "_tree_source"):
                record[name + suffix] = getattr(self, side + suffix)
        return record


class Predictor:
    """A trained classifier ready for raw text: the model, its vocabulary and its tokenizer.

    Build one with `load`. Each sentence is raw text (tokenised by `spinn.tokenize.tokenize`, lower-cased
    when the model was trained so) or a binary parse; see this module's docstring for which tree each
    model reads it as.

    Attributes:
        model: the `spinn.model.NLIClassifier`, in eval mode on `device`.
        vocab: its `spinn.data.vocab.Vocab`; config: the run's resolved `spinn.config.Config`.
        path: the checkpoint file it was read from; step: the optimiser steps it was trained for.
        device: where the model runs.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self.model, self.vocab, self.config = loaded.model, loaded.vocab, loaded.config
        self.path, self.step = loaded.path, loaded.step
        self.device = device

    def predict(self, pairs: Iterable[tuple[str, str] | str], *, batch_size: int = 64) -> list[Prediction]:
        """Label (premise, hypothesis) pairs of sentences (a classify checkpoint: single sentences), in
        order.

        Example: ``clf.predict([("A man is sleeping.", "A person rests.")])[0].label``.

        Raises:
            SpinnError: an item that is not a pair of strings (a classify checkpoint: not a string), an
                empty or malformed sentence, or a sentence none of whose words the model knows (each
                naming the pair).
        """
        return list(self.predictions(pairs, batch_size=batch_size))

    def predictions(
        self, pairs: Iterable[tuple[str, str] | str | Pair], *, batch_size: int = 64
    ) -> Iterator[Prediction]:
        """`predict`, lazily: labels each batch of `batch_size` pairs as it is reached (for large inputs)."""
        if batch_size < 1:
            raise SpinnError(f"batch_size: expected a value > 0, found {batch_size}")
        chunk: list[Pair] = []
        raw = 0
        for i, item in enumerate(pairs, 1):
            chunk.append(_as_pair(item, i, single=not self.model.sentence_pairs))
            if len(chunk) == batch_size:
                raw += yield from self._label(chunk, i - len(chunk))
                chunk = []
        if chunk:
            raw += yield from self._label(chunk, i - len(chunk))
        if raw:
            variant = self.model.variant
            why = "with transitions='given'" if variant == "spinn" else f"{variant} cannot parse"
            warnings.warn(
                f"{why}: {raw} raw-text sentence(s) were read as balanced binary trees; give binary "
                "parses (as in SNLI's sentence*_binary_parse) for the trees it was trained on",
                stacklevel=2,
            )

    def _read(self, chunk: list[Pair], before: int) -> list[list[Sentence]]:
        """The sentences of a batch (`before` pairs came earlier) as the model was trained to read them,
        each with a word the model knows."""
        lowercase, trees = self.config.data.lowercase, self.config.data.transitions
        sides = ("premise", "hypothesis") if self.model.sentence_pairs else ("sentence",)
        sentences = []
        for i, p in enumerate(chunk, before + 1):
            read = []
            for side, text in zip(sides, (p.premise, p.hypothesis), strict=False):
                s = _as_trained(read_sentence(text, lowercase=lowercase, where=f"pair {i}: {side}"), trees)
                if not any(t in self.vocab for t in s.tokens):
                    raise SpinnError(
                        f"pair {i}: {side}: none of its {len(s.tokens)} words is in the model's "
                        f"vocabulary ({' '.join(s.tokens[:8])}), expected at least one known word"
                    )
                read.append(s)
            sentences.append(read)
        return sentences

    @torch.no_grad()
    def _label(self, chunk: list[Pair], before: int) -> Generator[Prediction, None, int]:
        """Yield the predictions of one batch (`before` pairs came earlier); return how many sentences
        were raw text read as balanced trees."""
        sentences = self._read(chunk, before)
        out = self.model(
            collate_nli([_item(read, self.vocab, str(i)) for i, read in enumerate(sentences)]).to(self.device)
        )
        probs = out.logits.float().softmax(dim=1).cpu()
        names = class_names(self.config)
        predicts = self.model.variant == "spinn" and not self.model.eval_given_transitions
        raw = 0
        for i, (pair, read) in enumerate(zip(chunk, sentences, strict=True)):
            fields: dict[str, str] = {}
            for side, s, encoded in zip(
                ("premise", "hypothesis"), read, (out.premise, out.hypothesis), strict=False
            ):
                if predicts:
                    steps = encoded.predicted_transitions[i, : 2 * len(s.tokens) - 1].tolist()
                    tree, how = transitions_to_parse(s.tokens, steps), "predicted"
                else:
                    tree, how = transitions_to_parse(s.tokens, s.transitions), s.source
                    raw += how == "raw"
                fields |= {
                    side: s.text,
                    f"{side}_tree": tree,
                    f"{side}_tree_source": "balanced" if how == "raw" else how,
                }
            yield Prediction(
                label=names[int(probs[i].argmax())],
                probabilities=dict(zip(names, probs[i].tolist(), strict=True)),
                pair_id=pair.pair_id,
                **fields,
            )
        return raw


def _as_pair(item: Any, number: int, *, single: bool) -> Pair:
    if isinstance(item, Pair):
        return item
    if single and isinstance(item, str):
        return Pair(item, None)
    if (
        not single
        and isinstance(item, tuple | list)
        and len(item) == 2
        and all(isinstance(s, str) for s in item)
    ):
        return Pair(item[0], item[1])
    shown = repr(item) if len(repr(item)) <= 60 else repr(item)[:57] + "..."
    expected = (
        "a sentence (this model classifies single sentences)"
        if single
        else "a (premise, hypothesis) pair of strings"
    )
    raise SpinnError(f"pair {number}: expected {expected}, found {shown}")


def load(path: str | Path, *, device: str = "auto", transitions: str = "predicted") -> Predictor:
    """A trained classifier from a run folder (its ``best.pt``) or a checkpoint file, ready to predict.

    Example::

        clf = spinn.load("runs/small")
        [p.label for p in clf.predict([("A man is sleeping.", "A person rests.")])]

    Args:
        path: a run folder or a checkpoint file written by ``scripts/train.py``.
        device: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps.
        transitions: the full SPINN only: ``"predicted"`` parses each sentence itself, ``"given"``
            follows given binary parses (raw text then reads as a balanced tree); the other variants
            always follow given parses.

    Raises:
        SpinnError: a missing, unreadable or foreign checkpoint (naming the path), an unknown device,
            or an unknown `transitions`.
    """
    if transitions not in TRANSITIONS:
        raise SpinnError(f"transitions: expected one of {', '.join(TRANSITIONS)}, found {transitions!r}")
    resolved = cli.resolve_device(device)
    loaded = load_model(path, resolved)
    if loaded.model.variant == "spinn":
        loaded.model.eval_given_transitions = transitions == "given"
    return Predictor(loaded, resolved)


def _as_trained(sentence: Sentence, trees: str) -> Sentence:
    """The sentence read as the model was trained (``data.transitions``): a trivial tree replaces its
    parse, and says so as its source."""
    if trees == "given":
        return sentence
    return Sentence(
        sentence.text, sentence.tokens, [int(t) for t in TRIVIAL_TREES[trees](len(sentence.tokens))], trees
    )


def _item(sentences: list[Sentence], vocab: Vocab, item_id: str) -> NLIItem:
    """A pair, or a single sentence (no hypothesis), as `collate_nli` takes it."""
    first, second = sentences[0], sentences[1] if len(sentences) > 1 else None
    return NLIItem(
        vocab.encode(first.tokens),
        first.transitions,
        None if second is None else vocab.encode(second.tokens),
        None if second is None else second.transitions,
        0,
        item_id,
    )


# ---------------------------------------------------------------------------------------------------
# Entry point: check the arguments, load the model and the pairs, predict, write.
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Label premise/hypothesis pairs, or single sentences, with a spinn checkpoint.",
        epilog='example: python scripts/predict.py --checkpoint runs/small --premise "A dog runs." '
        '--hypothesis "An animal moves."',
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder (its best.pt)")
    parser.add_argument("--premise", help="raw text or a binary parse")
    parser.add_argument("--hypothesis", help="raw text or a binary parse")
    parser.add_argument("--sentence", help="classify checkpoints: the sentence, raw text or a binary parse")
    parser.add_argument(
        "--input",
        help="a .jsonl file, or a .tsv/.txt with a header row, of pairs (or sentences) instead of "
        "--premise/--hypothesis (or --sentence)",
    )
    parser.add_argument("--output", help="write JSON lines here instead of to stdout")
    parser.add_argument(
        "--transitions",
        choices=TRANSITIONS,
        default="predicted",
        help="full SPINN only: parse with its own predicted transitions (default), or follow given parses",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="pairs (or sentences) per batch (default 64)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--threads", type=cli.threads_argument, default=None, metavar="N|auto", help=cli.THREADS_HELP
    )
    return parser


def run_predict(args: argparse.Namespace) -> int:
    texts = [t for t in (args.premise, args.hypothesis, args.sentence) if t is not None]
    if args.input is None and not texts:
        raise SpinnError(
            "give --premise and --hypothesis (a classify checkpoint: --sentence), or --input FILE"
        )
    if args.input is not None and texts:
        raise SpinnError("give either --input FILE or --premise/--hypothesis (--sentence), not both")
    if args.batch_size < 1:
        raise SpinnError(f"--batch-size: expected a value > 0, found {args.batch_size}")
    cli.set_threads(args.threads)
    predictor = load(args.checkpoint, device=args.device, transitions=args.transitions)
    single = not predictor.model.sentence_pairs
    if args.input is None and single and (args.sentence is None or len(texts) > 1):
        raise SpinnError(
            f"{predictor.path} classifies single sentences: give --sentence TEXT or --input FILE"
        )
    if (
        args.input is None
        and not single
        and (args.premise is None or args.hypothesis is None or args.sentence)
    ):
        raise SpinnError(
            f"{predictor.path} labels sentence pairs: give --premise and --hypothesis, or --input FILE"
        )
    if args.input is not None:
        pairs = read_pairs(Path(args.input), single=single)
    else:
        pairs = [Pair(args.sentence, None) if single else Pair(args.premise, args.hypothesis)]
    records = (p.to_record() for p in predictor.predictions(pairs, batch_size=args.batch_size))
    if args.output is None:
        _write(records, sys.stdout)
    else:
        # A bad pair halfway through leaves the file as it was, not half-overwritten.
        with atomic_write(args.output, what="the predictions") as f:
            _write(records, f)
        print(f"{len(pairs)} prediction(s): {args.output}", file=sys.stderr)
    return 0


def _write(records: Iterator[dict[str, Any]], f: TextIO) -> None:
    for i, record in enumerate(records, 1):
        f.write(to_json(record, what=f"pair {i}: its prediction") + "\n")


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_predict, argv)


if __name__ == "__main__":
    sys.exit(main())
