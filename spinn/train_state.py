"""Where a training run stands, and how a checkpoint saves and restores it.

`TrainState` is the loop's position (saved in every checkpoint as ``state``); `LogWindow` the sums
since the last log line; `checkpoint_state` what a checkpoint holds (`spinn.checkpoint` writes it);
`restore` loads a training checkpoint back into the objects a run builds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.optim.swa_utils import AveragedModel

from spinn import distributed
from spinn.checkpoint import check_weights_fit, rng_state, set_rng_state
from spinn.config import Config, config_to_dict
from spinn.data.batching import BucketBatchSampler
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.model.classifier import NLIClassifier


@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    best_dev_acc: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    #: The step of the last dev evaluation: a resumed run that has none left to take does not repeat it.
    evaluated_step: int | None = None
    #: This rank's train loss sum, correct predictions and pairs since the last log line, so that the
    #: first line after a resume covers the same steps as without the interruption (`LogWindow.saved`).
    log_window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])
    #: Seconds spent training (and evaluating on dev) over every session of the run so far.
    train_seconds: float = 0.0

    def record_dev(self, accuracy: float) -> bool:
        """Note a dev evaluation at this step; True when its accuracy is the best so far."""
        self.evaluated_step = self.step
        improved = self.best_dev_acc is None or accuracy > self.best_dev_acc
        if improved:
            self.best_dev_acc, self.best_step, self.evals_since_best = accuracy, self.step, 0
        else:
            self.evals_since_best += 1
        return improved

    def out_of_patience(self, patience: int | None) -> bool:
        """True when `patience` (train.patience) evaluations in a row have not improved on the best."""
        return patience is not None and self.evals_since_best >= patience


class WindowFigures(NamedTuple):
    """One train log line's figures, over the global batches of its window."""

    loss: float
    acc: float
    examples_per_s: float


@dataclass
class LogWindow:
    """This rank's sums over the steps since the last log line: tensors, so that a GPU is not synced
    every step."""

    loss_sum: torch.Tensor  # () float32: the train loss summed over the pairs
    correct: torch.Tensor  # () float32: the pairs predicted right
    examples: int
    #: `time.perf_counter` when the window opened, moved on by the time spent evaluating.
    started: float

    @classmethod
    def resume(cls, saved: list[float], device: torch.device) -> LogWindow:
        """The window `saved` holds (`TrainState.log_window`), opened now."""
        return cls(
            torch.tensor(float(saved[0]), device=device),
            torch.tensor(float(saved[1]), device=device),
            int(saved[2]),
            time.perf_counter(),
        )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One step's batch: `loss` its mean, `logits` (B, C), `labels` (B,)."""
        self.loss_sum += loss.detach().float() * len(labels)
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.examples += len(labels)

    def figures(self, device: torch.device) -> WindowFigures:
        """The window's figures, summed over the ranks: those of the global batches (one host sync)."""
        seconds = time.perf_counter() - self.started
        pairs = torch.tensor(float(self.examples), device=device)
        (window,) = distributed.sum_over_ranks(torch.stack([self.loss_sum, self.correct.float(), pairs]))
        loss, correct, examples = window.tolist()
        return WindowFigures(loss / examples, correct / examples, examples / seconds)

    def reset(self) -> None:
        """Open the next window."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.examples, self.started = 0, time.perf_counter()

    def saved(self) -> list[float]:
        """What a checkpoint keeps of it (`TrainState.log_window`)."""
        return [float(self.loss_sum), float(self.correct), self.examples]


def restore(
    ckpt: dict[str, Any],
    model: NLIClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    sampler: BucketBatchSampler,
    averaged: AveragedModel | None = None,
) -> TrainState:
    """Load a training checkpoint's states into the objects; return the loop's position.

    Raises:
        SpinnError: the checkpoint is a model-only one, or its states do not fit these objects.
    """
    missing = [k for k in ("optimizer", "scheduler", "sampler", "rng", "state") if k not in ckpt]
    if missing:
        raise SpinnError(f"cannot resume from a checkpoint without {', '.join(missing)} (use last.pt)")
    # With a moving average, "model" holds the average and "online_model" the optimiser's weights.
    online = ckpt.get("online_model", ckpt["model"])
    check_weights_fit(model, online, "the checkpoint to resume from")
    model.load_state_dict(online)
    # The states bring back the learning rate and weight decay they were saved with; the config's
    # (which built these objects) apply from here on.
    base_lrs, decays = list(scheduler.base_lrs), [g["weight_decay"] for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise SpinnError(f"the checkpoint's optimizer state does not fit the model: {err}") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    scheduler.base_lrs = base_lrs
    for group, base, decay, lr_lambda in zip(
        optimizer.param_groups, base_lrs, decays, scheduler.lr_lambdas, strict=True
    ):
        group.update(initial_lr=base, lr=base * lr_lambda(scheduler.last_epoch), weight_decay=decay)
    sampler.load_state_dict(distributed.sampler_state(ckpt["sampler"]))
    set_rng_state(ckpt["rng_ranks"][distributed.rank()] if "rng_ranks" in ckpt else ckpt["rng"])
    state = TrainState(**ckpt["state"])
    if "log_window_ranks" in ckpt:
        state.log_window = ckpt["log_window_ranks"][distributed.rank()]
    if averaged is not None:
        averaged.module.load_state_dict(ckpt["model"])
        averaged.n_averaged.fill_(state.step)  # one update per step; 0 would restart it from a copy
    return state


def checkpoint_state(
    cfg: Config,
    vocab: Vocab,
    model: NLIClassifier,
    state: TrainState,
    *,
    dev: dict[str, Any] | None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None,
    sampler: dict[str, Any] | None = None,
    rng_ranks: list[dict[str, Any]] | None = None,
    log_windows: list[list[float]] | None = None,
    averaged: AveragedModel | None = None,
) -> dict[str, Any]:
    """What a checkpoint holds (see `spinn.checkpoint`); the training parts only when given.

    `sampler`: the training sampler's `state_dict` at the batches the loop has consumed.
    `rng_ranks`, `log_windows`: every rank's `rng_state` and `TrainState.log_window` in a distributed
    run (ckpt["rng"] and ckpt["state"] hold rank 0's).
    `averaged`: the moving average of the weights, saved as "model" (what evaluation and prediction
    load); a training checkpoint then keeps the optimiser's weights as "online_model".
    """
    ckpt = {
        "config": config_to_dict(cfg),
        "vocab": vocab.to_dict(),
        "model": (model if averaged is None else averaged.module).state_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "best_dev_acc": state.best_dev_acc,
        "dev": dev,
        "state": dict(state.__dict__),
    }
    if optimizer is not None:
        ckpt.update(
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            sampler=sampler,
            rng=rng_state(),
        )
        if rng_ranks is not None and len(rng_ranks) > 1:
            ckpt["rng_ranks"] = rng_ranks
        if log_windows is not None and len(log_windows) > 1:
            ckpt["log_window_ranks"] = log_windows
        if averaged is not None:
            ckpt["online_model"] = model.state_dict()
    return ckpt
