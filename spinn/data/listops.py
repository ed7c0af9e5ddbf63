"""ListOps (Nangia and Bowman 2018): nested list operations over the digits 0-9, and a generator.

An expression is a list: an operator, 2 to 5 arguments, and ``]``. Each argument is itself a list
(with probability 0.25, down to a maximum depth of 20, where it is always a digit) or a digit::

    [MAX 2 9 [MIN 4 7 ] 0 ]                                  value 9

The operators are ``[MIN``, ``[MAX``, ``[MED`` (the median; with an even number of values, the mean
of the two middle values rounded down, as the original generator's ``int(numpy.median(...))``) and
``[SM`` (the sum modulo 10). The label of an example is the value of its whole expression (10
classes).

Files are written as the released ListOps files are: ``label<TAB>binary parse``, one example a line,
each list bracketed left-branching: ``( ( ( [MAX 2 ) 9 ) ] )``. `spinn.transitions.parse_to_transitions`
reads that parse; its words are the expression's tokens.

    python -m spinn.data.listops --out data/listops
    python -m spinn.data.listops --out data/listops_short --max-length 100 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spinn import cli
from spinn.errors import SpinnError
from spinn.io import write_text

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
END = "]"
#: Probability that an argument is a list rather than a digit.
LIST_P = 0.25
MIN_ARGS, MAX_ARGS = 2, 5
MAX_DEPTH = 20
#: The splits `write_splits` writes by default, in this order from one random stream.
SPLITS = {"train": 90_000, "dev": 1_000, "test": 10_000}


@dataclass(frozen=True)
class ListExpr:
    """One list: its operator and its arguments (digits or lists)."""

    op: str
    args: tuple[int | ListExpr, ...]


def apply(op: str, values: Sequence[int]) -> int:
    """The value of operator `op` on `values`.

    Raises:
        SpinnError: an unknown operator or no values.
    """
    if not values:
        raise SpinnError(f"operator {op}: expected at least one value, found none")
    if op == MIN:
        return min(values)
    if op == MAX:
        return max(values)
    if op == SUM_MOD:
        return sum(values) % 10
    if op == MED:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    raise SpinnError(f"unknown operator {op!r}, expected one of {', '.join(OPERATORS)}")


def value(expr: int | ListExpr) -> int:
    """The value of an expression tree."""
    if isinstance(expr, int):
        return expr
    return apply(expr.op, [value(a) for a in expr.args])


def evaluate_tokens(tokens: Sequence[str]) -> int:
    """The value of an expression written as tokens (``[MAX 2 9 ]``; brackets of a parse are ignored).

    Raises:
        SpinnError: an unknown token, an unclosed list, a ``]`` with no open list, or not one value.
    """
    # Each open list: its operator and the values of the arguments read so far.
    open_lists: list[tuple[str, list[int]]] = []
    done: list[int] = []
    for pos, token in enumerate(tokens, 1):
        if token in ("(", ")"):
            continue
        if token in OPERATORS:
            open_lists.append((token, []))
            continue
        if token == END:
            if not open_lists:
                raise SpinnError(f"token {pos}: ']' closes no list")
            op, values = open_lists.pop()
            result = apply(op, values)
        elif token.isdigit() and len(token) == 1:
            result = int(token)
        else:
            raise SpinnError(f"token {pos}: expected a digit, an operator or ']', found {token!r}")
        (open_lists[-1][1] if open_lists else done).append(result)
    if open_lists or len(done) != 1:
        raise SpinnError(
            f"expected one complete expression, found {len(done)} value(s) and {len(open_lists)} open list(s)"
        )
    return done[0]


def generate(rng: random.Random, depth: int = 1, max_depth: int = MAX_DEPTH) -> ListExpr:
    """A random list at `depth` (the whole expression is at depth 1); each argument is a list with
    probability `LIST_P`, except at `max_depth`, where it is a digit."""
    args: list[int | ListExpr] = []
    for _ in range(rng.randint(MIN_ARGS, MAX_ARGS)):
        if depth + 1 < max_depth and rng.random() < LIST_P:
            args.append(generate(rng, depth + 1, max_depth))
        else:
            args.append(rng.randrange(10))
    return ListExpr(rng.choice(OPERATORS), tuple(args))


def tokens_of(expr: int | ListExpr) -> list[str]:
    """The expression's tokens in prefix order, without brackets."""
    if isinstance(expr, int):
        return [str(expr)]
    return [expr.op, *(t for a in expr.args for t in tokens_of(a)), END]


def binary_parse(expr: int | ListExpr) -> str:
    """The released files' bracketing: each list left-branching, ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(expr, int):
        return str(expr)
    tree = expr.op
    for item in [*(binary_parse(a) for a in expr.args), END]:
        tree = f"( {tree} {item} )"
    return tree


def examples(n: int, rng: random.Random, max_length: int | None = None) -> list[tuple[int, str]]:
    """`n` (label, binary parse) pairs; expressions of more than `max_length` tokens are drawn again."""
    out = []
    while len(out) < n:
        expr = generate(rng)
        if max_length is not None and len(tokens_of(expr)) > max_length:
            continue
        out.append((value(expr), binary_parse(expr)))
    return out


def write_splits(
    out_dir: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None, max_length: int | None = None
) -> dict[str, Path]:
    """Write ``<split>.tsv`` for each split (`SPLITS` by default), drawn in order from one seeded stream.

    Raises:
        SpinnError: a split size below 1 or a `max_length` below 4 (the shortest list has 4 tokens).
    """
    sizes = dict(SPLITS if sizes is None else sizes)
    for name, n in sizes.items():
        if n < 1:
            raise SpinnError(f"--{name}: expected at least 1 example, found {n}")
    if max_length is not None and max_length < MIN_ARGS + 2:
        raise SpinnError(f"--max-length: expected at least {MIN_ARGS + 2} tokens, found {max_length}")
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, n in sizes.items():
        paths[name] = out / f"{name}.tsv"
        rows = "".join(f"{label}\t{parse}\n" for label, parse in examples(n, rng, max_length))
        write_text(paths[name], rows, what=f"the {name} split")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate ListOps: label<TAB>binary parse files train.tsv, dev.tsv, test.tsv.",
        epilog="example: python -m spinn.data.listops --out data/listops --max-length 100",
    )
    parser.add_argument("--out", required=True, help="folder for train.tsv, dev.tsv and test.tsv")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for name, n in SPLITS.items():
        parser.add_argument(f"--{name}", type=int, default=n, help=f"{name} examples (default {n:,})")
    parser.add_argument(
        "--max-length", type=int, help="draw again any expression of more tokens than this (default: no cap)"
    )
    return parser


def run_generate(args: argparse.Namespace) -> int:
    sizes = {name: getattr(args, name) for name in SPLITS}
    paths = write_splits(args.out, seed=args.seed, sizes=sizes, max_length=args.max_length)
    for name, path in paths.items():
        print(f"{name}: {sizes[name]:,} examples in {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_generate, argv)


if __name__ == "__main__":
    sys.exit(main())
