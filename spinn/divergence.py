"""A run that diverges stops before a checkpoint could hold it: the errors for a training loss, a
gradient norm, a weight after the optimiser step or a dev loss that is NaN or infinite."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from spinn.checkpoint import first_non_finite
from spinn.data.batching import NLIBatch
from spinn.errors import SpinnError
from spinn.model.classifier import NLIClassifier
from spinn.train_state import TrainState


def stopped_advice(run_dir: Path) -> str:
    """What every divergence error ends with: nothing was saved, and what to try."""
    return (
        f"stopped without saving, so {run_dir} keeps its last good checkpoints. Lower optim.lr or set "
        f"optim.grad_clip, then --resume {run_dir}"
    )


def loss_not_finite(
    loss: torch.Tensor,
    grad_norm: torch.Tensor,
    batch: NLIBatch,
    state: TrainState,
    batch_no: int,
    n_batches: int,
    run_dir: Path,
) -> SpinnError:
    """The error for a step whose loss or gradient norm is not finite on some rank: batch `batch_no` of
    the epoch's `n_batches`."""
    if torch.isfinite(loss + grad_norm):
        # DDP averages the gradients over the ranks, not the losses: the fault is another rank's loss.
        what = "the training loss of another rank is not finite (its own error names its pairs)"
    else:
        pairs = ", ".join(batch.pair_ids[:4]) + (", ..." if len(batch) > 4 else "")
        name, value = ("loss", loss) if not torch.isfinite(loss) else ("gradient norm", grad_norm)
        what = (
            f"the training {name} is {value.item()}, expected a finite number (pairs of this batch: {pairs})"
        )
    return SpinnError(
        f"step {state.step + 1} (epoch {state.epoch}, batch {batch_no} of {n_batches}): {what}; "
        + stopped_advice(run_dir)
    )


def watched_weights(model: NLIClassifier) -> list[tuple[str, torch.Tensor]]:
    """What an optimiser step changes: the trainable weights and the floating-point buffers (batch-norm
    statistics), by name."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return params + [(name, b) for name, b in model.named_buffers() if b.is_floating_point()]


def weights_not_finite(
    watched: list[tuple[str, torch.Tensor]], state: TrainState, run_dir: Path
) -> SpinnError:
    """The error for a step after which `any_non_finite` found a NaN or an infinity in the weights."""
    bad = first_non_finite(watched)
    what = (
        f"tensor {bad} is NaN or infinite"
        if bad is not None
        else "the weights sum to more than float32 holds (or another rank's are not finite)"
    )
    return SpinnError(f"step {state.step + 1}: after the optimiser step, {what}; " + stopped_advice(run_dir))


def check_dev_loss(loss: float, state: TrainState, run_dir: Path) -> None:
    """A non-finite dev loss never becomes a checkpoint (nor best.pt).

    Raises:
        SpinnError: the loss is NaN or infinite.
    """
    if not math.isfinite(loss):
        raise SpinnError(
            f"step {state.step}: the dev loss is {loss}, expected a finite number; " + stopped_advice(run_dir)
        )
