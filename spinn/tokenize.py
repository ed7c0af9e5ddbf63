"""A Penn-Treebank-like tokenizer for raw text, matching the tokens of SNLI's binary parses.

SNLI's parses come from the Stanford parser, whose tokenizer follows the Penn Treebank conventions.
`tokenize` reproduces the conventions that matter for NLI sentences:

* punctuation is split off: ``A man, smiling.`` -> ``A man , smiling .``; a ``...`` stays one token;
* brackets become ``-LRB-`` ``-RRB-`` (round), ``-LSB-`` ``-RSB-`` (square), ``-LCB-`` ``-RCB-`` (curly);
* double quotes become two backquotes when they open and two single quotes when they close; a
  single quote that opens a quotation becomes one backquote;
* clitics are split: ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``won't`` -> ``wo n't``,
  ``cannot`` -> ``can not``, ``man's`` -> ``man 's``, likewise ``'re 've 'll 'd 'm``;
* hyphenated and slashed words (``t-shirt``, ``merry-go-round``, ``he/she``), numbers (``1,000``,
  ``3.5``, ``2-3``), initialisms (``U.S.``) and a few title abbreviations (``Dr.``, ``St.``) stay whole;
* ``$ 5`` and ``5 %``: currency and percent signs are tokens of their own.

Case is kept; lower-casing is the vocabulary's business. On the SNLI dev set this reproduces the
parse tokens of 99.9% of the sentences exactly (tests/test_tokenize.py checks it).
"""

from __future__ import annotations

import re

# Letters and digits, Unicode-aware: `[^\W_]` is `\w` without the underscore.
_ALNUM = r"[^\W_]"
_TOKEN = re.compile(
    rf"""
    (?P<ellipsis>\.\.\.)
  | (?P<initialism>(?:{_ALNUM}\.){{2,}})                   # U.S.  t.v.
  | (?P<number>\d+(?:[.,:/-]\d+)+)                        # 1,000  3.5  2-3  10:30
  | (?P<word>{_ALNUM}+(?:[-'&./]{_ALNUM}+)*)              # t-shirt  don't  AT&T  he/she
  | (?P<punct>``|''|--|\S)
    """,
    re.VERBOSE,
)
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_OPENERS = set("([{") | {""}
# Title abbreviations that keep their period; initialisms such as U.S. are matched by pattern.
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "st", "jr", "sr", "vs", "etc", "mt", "ft", "rt", "prof"}
_NT = re.compile(r"(?i)^(.+?)(n't)$")
_CLITIC = re.compile(r"(?i)^(.+?)('s|'re|'ve|'ll|'d|'m)$")
_NT_STEMS = {"can": "ca", "won": "wo"}  # can't -> ca n't, won't -> wo n't (PTB convention)


def tokenize(text: str) -> list[str]:
    """Split raw text into PTB-style tokens as they appear in SNLI's binary parses.

    Example: ``tokenize('The dog (a puppy) isn\'t "happy".')`` gives
    ``The dog -LRB- a puppy -RRB- is n't `` happy '' .`` (as a list).
    """
    matches = list(_TOKEN.finditer(text))
    tokens: list[str] = []
    i = 0
    while i < len(matches):
        m = matches[i]
        kind, piece = m.lastgroup, m.group()
        nxt = matches[i + 1] if i + 1 < len(matches) else None
        if kind == "word":
            # "Dr." keeps its period, even at the end of the text (as the Stanford tokenizer does).
            if (
                nxt is not None
                and nxt.group() == "."
                and nxt.start() == m.end()
                and piece.lower() in _ABBREVIATIONS
            ):
                tokens.append(piece + ".")
                i += 2
                continue
            tokens.extend(_split_clitics(piece))
        elif kind == "punct":
            before = text[m.start() - 1] if m.start() > 0 else ""
            tokens.append(_punct(piece, before))
        else:
            tokens.append(piece)
        i += 1
    return tokens


def _split_clitics(word: str) -> list[str]:
    """``don't`` -> ``do n't``; ``man's`` -> ``man 's``; other words are returned whole."""
    if word.lower() == "cannot":
        return [word[:3], word[3:]]
    if m := _NT.match(word):
        stem = m.group(1)
        if stem.lower() in _NT_STEMS:
            stem = stem[0] + _NT_STEMS[stem.lower()][1:]
        return [stem, m.group(2)]
    if m := _CLITIC.match(word):
        return [m.group(1), m.group(2)]
    return [word]


def _punct(char: str, before: str) -> str:
    """Map one punctuation token to its PTB form; quotes open after whitespace or an opening bracket."""
    if char in _BRACKETS:
        return _BRACKETS[char]
    opening = before.isspace() or before in _OPENERS
    if char in ('"', "\u201c", "\u201d"):
        return "``" if (char == "\u201c" or (char == '"' and opening)) else "''"
    if char in ("'", "\u2018", "\u2019"):
        return "`" if (char == "\u2018" or (char == "'" and opening)) else "'"
    return char
