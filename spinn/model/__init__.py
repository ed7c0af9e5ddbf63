"""The SPINN encoder and the NLI classifier built on it."""

from spinn.model.classifier import VARIANTS, ClassifierOutput, NLIClassifier
from spinn.model.schedule import Schedule, build_schedule
from spinn.model.spinn import SPINN, Reduce, SPINNOutput, Tracker, transition_loss

__all__ = [
    "SPINN",
    "VARIANTS",
    "ClassifierOutput",
    "NLIClassifier",
    "Reduce",
    "SPINNOutput",
    "Schedule",
    "Tracker",
    "build_schedule",
    "transition_loss",
]
