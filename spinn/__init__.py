"""spinn: the SPINN shift-reduce sentence encoder (Bowman et al. 2016) for PyTorch 2.x."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it from here

from spinn.data.batching import (
    BucketBatchSampler,
    NLIBatch,
    NLIDataset,
    Sentences,
    collate_nli,
    pad_sentences,
)
from spinn.data.glove import load_glove
from spinn.data.snli import LABELS, read_nli
from spinn.data.vocab import Vocab
from spinn.errors import ParseError, SpinnError
from spinn.model import SPINN, NLIClassifier, Reduce, SPINNOutput, Tracker
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
    "SPINN",
    "NLIClassifier",
    "Reduce",
    "SPINNOutput",
    "Tracker",
    "LABELS",
    "Prediction",
    "Predictor",
    "load",
    "BucketBatchSampler",
    "NLIBatch",
    "NLIDataset",
    "Vocab",
    "collate_nli",
    "load_glove",
    "read_nli",
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

#: Names of spinn.predict, imported when first used: importing it with the package would make
#: ``python -m spinn.evaluate`` and ``python -m spinn.predict`` run modules already imported.
_PREDICT_NAMES = ("Prediction", "Predictor", "load")


def __getattr__(name: str) -> object:
    if name in _PREDICT_NAMES:
        from spinn import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'spinn' has no attribute {name!r}")
