"""spinn: the SPINN shift-reduce sentence encoder (Bowman et al. 2016) for PyTorch 2.x."""

from spinn.data.batching import Sentences, pad_sentences
from spinn.errors import ParseError, SpinnError
from spinn.transitions import (
    REDUCE,
    SHIFT,
    Transition,
    balanced,
    left_branching,
    parse_to_transitions,
    right_branching,
    transitions_to_parse,
    validate_transitions,
)

__all__ = [
    "REDUCE",
    "SHIFT",
    "ParseError",
    "Sentences",
    "SpinnError",
    "Transition",
    "balanced",
    "left_branching",
    "pad_sentences",
    "parse_to_transitions",
    "right_branching",
    "transitions_to_parse",
    "validate_transitions",
]
