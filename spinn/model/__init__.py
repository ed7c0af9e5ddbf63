"""The SPINN encoder and the NLI classifier built on it."""

from spinn.model.cells import Reduce, Tracker
from spinn.model.classifier import VARIANTS, ClassifierOutput, NLIClassifier
from spinn.model.compositions import COMPOSITIONS, TanhReduce, TreeGRU
from spinn.model.leaves import LEAVES, Projection, SequentialLeaves
from spinn.model.spinn import SPINN, SPINNOutput, transition_loss
from spinn.schedule import Schedule, build_schedule

__all__ = [
    "COMPOSITIONS",
    "LEAVES",
    "SPINN",
    "VARIANTS",
    "ClassifierOutput",
    "NLIClassifier",
    "Projection",
    "Reduce",
    "SPINNOutput",
    "Schedule",
    "SequentialLeaves",
    "TanhReduce",
    "Tracker",
    "TreeGRU",
    "build_schedule",
    "transition_loss",
]
