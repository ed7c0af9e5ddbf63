"""Binary parses as SHIFT/REDUCE transition sequences, and back.

A binary parse such as ``( ( The church ) ( has cracks ) )`` is read left to right: each word is a
SHIFT, each closing bracket a REDUCE, and opening brackets are dropped (Bowman et al. 2016, sec. 2).
A sentence of n words has exactly n SHIFTs and n - 1 REDUCEs, and a REDUCE always finds at least two
items on the stack. A single word is a valid parse (one SHIFT).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from spinn.errors import ParseError


class Transition(IntEnum):
    SHIFT = 0
    REDUCE = 1
    #: Fills the tail of a padded batch; never part of a parse.
    PAD = 2


SHIFT, REDUCE, PAD = Transition.SHIFT, Transition.REDUCE, Transition.PAD


def parse_to_transitions(parse: str) -> tuple[list[str], list[Transition]]:
    """Split a binary parse into its words and its transitions.

    Words are separated by whitespace; brackets are items of their own, with or without spaces around
    them: ``(a (b c))`` reads as ``( a ( b c ) )``. A bracket that is part of the text must be written
    as a word, as the Penn Treebank and SNLI do: ``-LRB-`` and ``-RRB-``.

    Args:
        parse: a binary bracketing such as ``( ( The church ) ( has cracks ) )``; a single word is a
            tree of one word.

    Returns:
        (words, transitions): the n words in order, and their 2 n - 1 SHIFT/REDUCE transitions.

    Raises:
        ParseError: unbalanced brackets, a node with more or fewer than two children (naming the item
            where it closes), more than one tree, or no words.
    """
    tokens: list[str] = []
    transitions: list[Transition] = []
    # Children seen so far in each open bracket; the outermost entry is the top level.
    open_children = [0]
    # Spacing out the brackets costs about as much as checking whether they need it.
    for pos, item in enumerate(parse.replace("(", " ( ").replace(")", " ) ").split()):
        if item == "(":
            open_children.append(0)
        elif item == ")":
            if len(open_children) == 1:
                raise ParseError(f"unbalanced parse: ')' at item {pos + 1} closes no bracket")
            n = open_children.pop()
            if n != 2:
                raise ParseError(
                    f"non-binary parse: the bracket closed at item {pos + 1} has {n} children, expected 2"
                )
            transitions.append(REDUCE)
            open_children[-1] += 1
        else:
            tokens.append(item)
            transitions.append(SHIFT)
            open_children[-1] += 1
    if len(open_children) != 1:
        raise ParseError(f"unbalanced parse: {len(open_children) - 1} bracket(s) left open")
    if not tokens:
        raise ParseError("empty parse: expected at least one word")
    if open_children[0] != 1:
        raise ParseError(f"non-binary parse: {open_children[0]} top-level nodes, expected one tree")
    return tokens, transitions


def validate_transitions(transitions: Sequence[int], n_tokens: int | None = None) -> None:
    """Check that `transitions` builds exactly one binary tree over `n_tokens` words.

    Raises:
        ParseError: naming the first offending step.
    """
    depth = 0
    shifts = 0
    for step, t in enumerate(transitions):
        if t == SHIFT:
            depth += 1
            shifts += 1
        elif t == REDUCE:
            if depth < 2:
                raise ParseError(
                    f"REDUCE at step {step} with {depth} item(s) on the stack, expected at least 2"
                )
            depth -= 1
        else:
            raise ParseError(f"step {step}: expected SHIFT (0) or REDUCE (1), found {t!r}")
    if n_tokens is not None and shifts != n_tokens:
        raise ParseError(f"{shifts} SHIFTs for {n_tokens} tokens, expected one SHIFT per token")
    if depth != 1:
        raise ParseError(
            f"{len(transitions)} transitions leave {depth} items on the stack, expected 1 "
            f"(n SHIFTs and n - 1 REDUCEs)"
        )


def transitions_to_parse(tokens: Sequence[str], transitions: Sequence[int]) -> str:
    """Rebuild the bracketed binary parse that `parse_to_transitions` reads."""
    validate_transitions(transitions, len(tokens))
    stack: list[str] = []
    words = iter(tokens)
    for t in transitions:
        if t == SHIFT:
            stack.append(next(words))
        else:
            right = stack.pop()
            left = stack.pop()
            stack.append(f"( {left} {right} )")
    return stack[0]


def left_branching(n: int) -> list[Transition]:
    """``(((w1 w2) w3) w4)``: SHIFT SHIFT REDUCE SHIFT REDUCE ..."""
    _check_length(n)
    return [SHIFT] + [SHIFT, REDUCE] * (n - 1)


def right_branching(n: int) -> list[Transition]:
    """``(w1 (w2 (w3 w4)))``: n SHIFTs, then n - 1 REDUCEs."""
    _check_length(n)
    return [SHIFT] * n + [REDUCE] * (n - 1)


def balanced(n: int) -> list[Transition]:
    """A complete-as-possible binary tree; the left half gets the extra word when n is odd."""
    _check_length(n)
    if n == 1:
        return [SHIFT]
    left = (n + 1) // 2
    return balanced(left) + balanced(n - left) + [REDUCE]


#: The trivial trees a binary parse can be replaced by (``data.transitions``), by name.
TRIVIAL_TREES = {"left": left_branching, "right": right_branching, "balanced": balanced}


def _check_length(n: int) -> None:
    if n < 1:
        raise ParseError(f"a tree needs at least one word, got {n}")
