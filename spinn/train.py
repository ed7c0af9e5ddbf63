"""Train a sentence encoder (SPINN or a baseline) on NLI or sentence classification from a YAML config;
the training loop is `train` below.

    python scripts/train.py --config configs/small.yaml
    python scripts/train.py --config configs/snli_spinn_pi.yaml --set optim.lr=1e-3 --set train.max_steps=500
    python scripts/train.py --resume runs/small --set train.epochs=20

The run folder (``train.out_dir``) receives ``config.yaml`` (resolved), ``vocab.json``, ``log.jsonl``
(one JSON object per logged step and per evaluation), ``last.pt`` and ``best.pt`` checkpoints,
``summary.json`` (best step; dev and test accuracy of the best checkpoint), ``learning_curve.png``
(with matplotlib) and ``tb/`` (with ``train.tensorboard=true``, which needs the tensorboard package).

Ctrl-C or SIGTERM stops after the current step, saves ``last.pt`` and exits with status 130 / 143;
``--resume RUN_DIR`` then continues exactly where the run stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from spinn import cli, distributed
from spinn.checkpoint import any_non_finite, load_checkpoint, rng_state, save_checkpoint
from spinn.config import (
    Config,
    TrainConfig,
    build_model,
    config_to_dict,
    load_config,
    save_config,
)
from spinn.data.batching import BucketBatchSampler, NLIBatch, NLIDataset, collate_nli, nli_batches
from spinn.data.glove import load_glove
from spinn.data.vocab import Vocab
from spinn.divergence import check_dev_loss, loss_not_finite, watched_weights, weights_not_finite
from spinn.errors import SpinnError
from spinn.evaluate import EvalResult, Split, evaluate, read_table, split_metrics
from spinn.io import check_readable, to_json, write_text
from spinn.model.classifier import ClassifierOutput, NLIClassifier
from spinn.precision import bf16_applies, bf16_autocast
from spinn.resume import check_resumed_vocab, resumed_config
from spinn.run_dir import check_run_dir, own_run_dir
from spinn.signals import StopRequest, stop_on_signals
from spinn.summary import plot_learning_curve, summarize
from spinn.train_state import LogWindow, TrainState, checkpoint_state, restore

#: What `train` returns when a signal stopped it.
INTERRUPTIONS = ("SIGINT", "SIGTERM")


@dataclass
class Data:
    vocab: Vocab
    train: Split
    dev: Split
    test: Split | None
    #: (len(vocab), d_embed) GloVe rows for a new run; None when resuming or without GloVe.
    embeddings: torch.Tensor | None


@dataclass
class RunLog:
    """log.jsonl, TensorBoard (when installed and asked for) and the figures the progress bar shows."""

    path: Path
    tensorboard: Any = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one line.

        Raises:
            SpinnError: the line cannot be written (a full disk); the checkpoints are untouched.
        """
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(to_json(record, what=f"{self.path}: a log line") + "\n")
        except OSError as err:
            raise SpinnError(
                f"{self.path}: cannot write the log ({err.strerror or err}); the checkpoints next to it are "
                f"intact: free some space and continue with --resume {self.path.parent}"
            ) from None
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "epoch", "split") and isinstance(value, int | float):
                    self.tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


# ---------------------------------------------------------------------------------------------------
# Setup: each function builds one object.
# ---------------------------------------------------------------------------------------------------


def setup_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any] | None]:
    """The run's config and, with ``--resume``, the checkpoint to continue from.

    Raises:
        SpinnError: a bad config or override, a missing checkpoint, or neither --config nor --resume.
    """
    if args.resume is None:
        if args.config is None:
            raise SpinnError("give --config FILE for a new run, or --resume RUN_DIR to continue one")
        return load_config(args.config, args.set), None
    run_dir = Path(args.resume)
    ckpt = load_checkpoint(run_dir / "last.pt" if run_dir.is_dir() else run_dir)
    return resumed_config(run_dir, ckpt, args.config, args.set), ckpt


def setup_data(cfg: Config, vocab: Vocab | None) -> Data:
    """Read train, dev and test; build the vocabulary and look up GloVe unless `vocab` is given.

    Raises:
        SpinnError: a missing or malformed data or GloVe file.
    """
    d, progress = cfg.data, cfg.train.progress
    paths = {"train": d.path(d.train), "dev": d.path(d.dev), "test": d.path(d.test)}
    for name, path in paths.items():
        if path is not None:
            try:
                check_readable(path, "data file")
            except SpinnError as err:
                raise SpinnError(f"data.{name}: {err} (data.data_dir is {d.data_dir!r})") from None
    tables = {
        name: read_table(p, d, task=cfg.task, phrases=d.phrases and name == "train", progress=progress)
        for name, p in paths.items()
        if p is not None
    }
    embeddings = None
    if vocab is None:
        counts: Counter[str] = Counter()
        for name, table in tables.items():
            if name == "train" or cfg.vocab.include_eval_words:
                counts.update(table.counts())
        vocab = Vocab.from_counts(counts, cfg.vocab.min_freq)
        if cfg.vocab.glove is not None:
            glove = load_glove(
                d.path(cfg.vocab.glove),
                vocab,
                cfg.model.d_embed,
                cache_dir=d.cache_dir,
                progress=progress,
                seed=cfg.train.seed,
            )
            print(f"GloVe: {glove.found:,} of {glove.total:,} vocabulary words found ({glove.coverage:.1%})")
            embeddings = glove.vectors
    splits = {
        name: Split(NLIDataset(t, vocab), paths[name], t.no_gold, t.invalid) for name, t in tables.items()
    }
    unit, left_out = ("pairs", "without a gold label") if cfg.task == "nli" else ("sentences", "left out")
    for name, split in splits.items():
        print(f"{name}: {len(split.dataset):,} {unit} from {split.path} ({split.no_gold} {left_out})")
    return Data(vocab, splits["train"], splits["dev"], splits.get("test"), embeddings)


def setup_model(cfg: Config, data: Data, device: torch.device) -> NLIClassifier:
    model = build_model(cfg, len(data.vocab), data.embeddings).to(device)
    # The baselines ignore model.variant: name the encoder that runs.
    encoder = cfg.model.variant if cfg.model.encoder == "spinn" else cfg.model.encoder
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(
        f"model: {encoder}, {trainable:,} trainable parameters, {frozen:,} frozen; "
        f"device {device}, {torch.get_num_threads()} CPU thread(s)"
    )
    return model


def setup_optimizer(cfg: Config, model: NLIClassifier) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    # The paper's L2 term lambda * sum(theta^2) has gradient 2 * lambda * theta: weight decay 2 * lambda.
    decay = 2 * o.l2
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=decay)
    kind = torch.optim.Adam if o.name == "adam" else torch.optim.SGD
    try:
        # One kernel per weight tensor for the whole update: Adam on the CPU takes 0.4 ms a step
        # instead of 3.1 for 1.3M weights (equal to 2e-7 after 20 steps). torch < 2.4 has these
        # kernels on CUDA only, and no torch has them for RMSprop.
        return kind(params, lr=o.lr, weight_decay=decay, fused=True)
    except RuntimeError:
        return kind(params, lr=o.lr, weight_decay=decay)


def setup_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """lr * lr_decay ** (step / lr_decay_steps): the paper's "0.75 every 10k steps", applied smoothly."""
    o = cfg.optim
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: o.lr_decay ** (step / o.lr_decay_steps))


def setup_averaged(cfg: Config, model: NLIClassifier) -> AveragedModel | None:
    """The exponential moving average of the weights that is evaluated and saved (optim.ema_decay)."""
    decay = cfg.optim.ema_decay
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=warmed_up_ema(decay), use_buffers=True)


def warmed_up_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """An `AveragedModel` multi_avg_fn: the moving average with decay ``min(decay, (1 + n) / (10 + n))``
    after n updates (as TensorFlow's ExponentialMovingAverage with num_updates), updated in place.

    A constant decay keeps ``decay ** n`` of the initial weights and batch-norm statistics: 37% after
    100 steps at 0.99, enough to wreck a short run's averaged model; the warm-up forgets them.
    Integer buffers (batch norm's batch count) take the current value.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        # AveragedModel groups the tensors by device and dtype: one weight serves the whole group.
        if not averaged[0].is_floating_point():
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
            return
        weight = 1 - ((1 + n) / (10 + n)).clamp(max=decay).to(averaged[0].dtype)  # a tensor: no host sync
        for a, c in zip(averaged, current, strict=True):
            a.lerp_(c, weight)

    return update


def setup_sampler(cfg: Config, data: Data) -> BucketBatchSampler:
    """This rank's batches: ``train.batch_size`` is the global batch, split over the ranks."""
    return distributed.train_sampler(data.train.dataset.lengths, cfg.train.batch_size, cfg.train.seed)


def setup_log(cfg: Config, run_dir: Path, resume_step: int | None) -> RunLog:
    """Open log.jsonl; on resume drop lines logged after the checkpoint, which the run will redo."""
    path = run_dir / "log.jsonl"
    if not cli.is_main_process():
        return RunLog(path)  # the other ranks of a distributed run never write it
    if resume_step is None:
        write_text(path, "", what="the log")
    elif path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if (step := _logged_step(line)) is not None and step <= resume_step]
        write_text(path, "".join(line + "\n" for line in kept), what="the log")
    writer = None
    if cfg.train.tensorboard:
        from torch.utils.tensorboard import SummaryWriter  # check_tensorboard made sure it is there

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
    return RunLog(path, writer)


def check_tensorboard(cfg: Config) -> None:
    """train.tensorboard asks for TensorBoard events: without the package, say so before the run starts.

    Raises:
        SpinnError: the tensorboard package is not installed.
    """
    if not cfg.train.tensorboard:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401 (only whether it imports)
    except ImportError:
        raise SpinnError(
            "train.tensorboard: true needs the tensorboard package, which is not installed: "
            "pip install tensorboard, or set train.tensorboard=false"
        ) from None


def _logged_step(line: str) -> int | None:
    """The step of a log line; None for a line cut short by a crash or a full disk."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------------------------------


def train(
    cfg: Config,
    data: Data,
    model: NLIClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    sampler: BucketBatchSampler,
    state: TrainState,
    log: RunLog,
    run_dir: Path,
    device: torch.device,
    averaged: AveragedModel | None = None,
) -> str:
    """Train until max_steps, epochs, early stopping or a signal; return which of these stopped it
    ("max_steps", "epochs", "early_stopping", or the signal's name, one of `INTERRUPTIONS`).

    Evaluates on the whole dev split every ``train.eval_every`` steps and at the end, writing
    ``last.pt`` each time and ``best.pt`` when dev accuracy improves. With `averaged` (a moving
    average of the weights, updated after every step) the average is what is evaluated and saved.
    """
    t = cfg.train
    loop = Loop(cfg, data, model, optimizer, scheduler, sampler, state, log, run_dir, device, averaged)
    step = setup_step(cfg, model, device)
    bar = progress_bar(loop)
    reason = no_training_left(t, state)
    batches = nli_batches(data.train.dataset, sampler, workers=t.loader_workers)
    if state.step == 0:
        save_last(loop)  # a run killed before its first evaluation can be resumed too
    model.train()
    with stop_on_signals() as stop:
        while reason is None:
            sampler.set_epoch(state.epoch)
            loop.consumed = sampler.start
            for batch in batches:
                loop.consumed += 1
                batch = batch.to(device)
                done = train_step(loop, step, batch)
                loop.window.add(done.loss, done.out.logits, batch.labels)
                state.step += 1
                bar.update(1)
                if state.step % t.log_every == 0:
                    log_train(loop, bar)
                reason = after_step(loop, stop)
                if reason is not None:
                    break
            else:
                state.epoch += 1
                if t.epochs is not None and state.epoch >= t.epochs:
                    reason = "epochs"
    bar.close()
    if reason in INTERRUPTIONS:
        save_last(loop)
        return reason
    if state.evaluated_step != state.step:
        evaluate_and_save(loop)
    return reason


@dataclass
class Loop:
    """What the pieces of `train` share: the objects the loop drives (its arguments) and where it stands."""

    cfg: Config
    data: Data
    model: NLIClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BucketBatchSampler
    state: TrainState
    log: RunLog
    run_dir: Path
    device: torch.device
    #: The moving average of the weights (optim.ema_decay), or None.
    averaged: AveragedModel | None
    #: This process writes the files (rank 0 of a distributed run).
    main: bool = field(init=False)
    #: `time.perf_counter` at the start of the run, earlier sessions included: train_seconds counts from it.
    started: float = field(init=False)
    #: The sums since the last train log line; a resumed run continues the window its checkpoint saved.
    window: LogWindow = field(init=False)
    #: The batches of the epoch taken so far: the sampler's own count runs ahead of it by what the
    #: loader's workers have prefetched.
    consumed: int = field(init=False)

    def __post_init__(self) -> None:
        self.main = cli.is_main_process()
        self.started = time.perf_counter() - self.state.train_seconds
        self.window = LogWindow.resume(self.state.log_window, self.device)
        self.consumed = self.sampler.start

    @property
    def evaluated(self) -> NLIClassifier:
        """The weights dev evaluation scores and checkpoints save as "model": the average, if any."""
        return self.model if self.averaged is None else self.averaged.module

    def epoch_position(self) -> float:
        """Epochs done, with the fraction of the current one, for the log."""
        position = self.sampler.state_dict(batches_consumed=self.consumed)
        return position["epoch"] + position["batches_consumed"] / max(len(self.sampler), 1)


@dataclass
class StepSetup:
    """What every optimiser step uses, fixed for the whole run."""

    #: DistributedDataParallel under torchrun, the model itself otherwise, compiled with train.compile.
    forward: Callable[[NLIBatch], ClassifierOutput]
    #: bf16 autocast or nothing (`spinn.precision.bf16_autocast`).
    autocast: contextlib.AbstractContextManager
    trainable: list[torch.Tensor]
    #: optim.grad_clip; inf measures the norm and clips nothing.
    clip: float
    #: What a step changes, by name (`watched_weights`), and the same tensors alone.
    watched: list[tuple[str, torch.Tensor]]
    watched_tensors: list[torch.Tensor]


def setup_step(cfg: Config, model: NLIClassifier, device: torch.device) -> StepSetup:
    wrapped = distributed.wrap(model, device)  # checkpoints save `model`, never the wrapper
    watched = watched_weights(model)
    return StepSetup(
        forward=torch.compile(wrapped) if cfg.train.compile else wrapped,
        autocast=bf16_autocast(cfg.train.bf16, device),
        trainable=[p for p in model.parameters() if p.requires_grad],
        clip=math.inf if cfg.optim.grad_clip is None else cfg.optim.grad_clip,
        watched=watched,
        watched_tensors=[tensor for _, tensor in watched],
    )


class StepOutput(NamedTuple):
    out: ClassifierOutput
    #: () the batch's mean loss, still on the device.
    loss: torch.Tensor


def train_step(loop: Loop, step: StepSetup, batch: NLIBatch) -> StepOutput:
    """One optimiser step on `batch` (and the moving average's).

    Raises:
        SpinnError: the loss, the gradient norm or a weight after the step is not finite on some rank.
    """
    with step.autocast:
        out = step.forward(batch)  # ClassifierOutput: logits (B, C), transition loss
        loss = loop.model.loss(out, batch.labels)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(step.trainable, step.clip)
    # One host sync a step checks both, before the step could spoil the weights: the checkpoints on
    # disk predate it. Every rank stops at the step where any rank's are not finite (alone, it would
    # leave the others waiting on it in their next all-reduce).
    if distributed.any_rank(not torch.isfinite(loss + grad_norm), loop.device):
        raise loss_not_finite(
            loss, grad_norm, batch, loop.state, loop.consumed, len(loop.sampler), loop.run_dir
        )
    loop.optimizer.step()
    loop.scheduler.step()
    if loop.averaged is not None:
        loop.averaged.update_parameters(loop.model)
    # One reduction and one host sync: a step that spoilt the weights or the batch-norm statistics
    # stops the run before any checkpoint could hold them.
    if distributed.any_rank(bool(any_non_finite(step.watched_tensors)), loop.device):
        raise weights_not_finite(step.watched, loop.state, loop.run_dir)
    return StepOutput(out, loss)


def progress_bar(loop: Loop) -> tqdm:
    t = loop.cfg.train
    planned = [n for n in (t.max_steps, t.epochs and t.epochs * len(loop.sampler)) if n]
    return tqdm(
        total=min(planned),
        initial=loop.state.step,
        unit="step",
        disable=not (t.progress and loop.main),
        dynamic_ncols=True,
    )


def no_training_left(t: TrainConfig, state: TrainState) -> str | None:
    """The reason a run resumed from its final checkpoint (killed while summarising, or asked for fewer
    steps than it has taken) has no step left to take; None when it has some."""
    reason = None
    if t.max_steps is not None and state.step >= t.max_steps:
        reason = "max_steps"
    elif t.epochs is not None and state.epoch >= t.epochs:
        reason = "epochs"
    elif state.out_of_patience(t.patience):
        reason = "early_stopping"
    if reason is not None and cli.is_main_process():
        print(f"no training left: the run is at step {state.step}, epoch {state.epoch} ({reason} reached)")
    return reason


def after_step(loop: Loop, stop: StopRequest) -> str | None:
    """Evaluate on dev when due; the reason to stop after this step, if any (the same on every rank)."""
    t, state = loop.cfg.train, loop.state
    reason = None
    if state.step % t.eval_every == 0:
        eval_start = time.perf_counter()
        if evaluate_and_save(loop):
            reason = "early_stopping"
        loop.window.started += time.perf_counter() - eval_start  # examples/s counts training time only
    if t.max_steps is not None and state.step >= t.max_steps:
        reason = reason or "max_steps"
    # All ranks leave at the same step, whichever of them caught the signal.
    if distributed.any_rank(stop.signum is not None, loop.device):
        reason = signal.Signals(stop.signum or signal.SIGTERM).name
    return reason


def log_train(loop: Loop, bar: tqdm) -> None:
    """Close the log window: one train line (loss, accuracy, learning rate, examples/s) and the bar's."""
    figures = loop.window.figures(loop.device)
    record = {
        "step": loop.state.step,
        "epoch": loop.epoch_position(),
        "split": "train",
        "loss": figures.loss,
        "acc": figures.acc,
        "lr": loop.optimizer.param_groups[0]["lr"],
        "examples_per_s": figures.examples_per_s,
    }
    if loop.main:
        loop.log.write(record)
    bar.set_postfix(
        loss=f"{figures.loss:.3f}", acc=f"{figures.acc:.3f}", ex_s=f"{figures.examples_per_s:.0f}"
    )
    loop.window.reset()


def evaluate_and_save(loop: Loop) -> bool:
    """Whole-dev evaluation, a log line, best.pt when it is the best so far, and last.pt; True when
    patience has run out."""
    t, state = loop.cfg.train, loop.state
    result = evaluate(
        loop.evaluated,
        loop.data.dev.dataset,
        batch_size=t.eval_batch_size,
        device=loop.device,
        bf16=t.bf16,
        progress=t.progress and loop.main,
        desc="dev",
    )
    loop.model.train()
    check_dev_loss(result.loss, state, loop.run_dir)
    improved = state.record_dev(result.accuracy)
    record = {
        "step": state.step,
        "epoch": loop.epoch_position(),
        "split": "dev",
        "loss": result.loss,
        "acc": result.accuracy,
        "best_acc": state.best_dev_acc,
    }
    if result.parse_accuracy is not None:
        record["parse_acc"] = result.parse_accuracy
    if loop.main:
        loop.log.write(record)
        if improved:
            save_best(loop, result)
    save_last(loop)
    tqdm.write(
        f"step {state.step}: dev acc {result.accuracy:.4f} (best {state.best_dev_acc:.4f} "
        f"at step {state.best_step})"
    )
    return state.out_of_patience(t.patience)


def save_best(loop: Loop, result: EvalResult) -> None:
    """best.pt: the evaluated weights and their dev figures (rank 0 only)."""
    dev = split_metrics(result, loop.data.dev)
    ckpt = checkpoint_state(
        loop.cfg, loop.data.vocab, loop.model, loop.state, dev=dev, averaged=loop.averaged
    )
    save_checkpoint(ckpt, loop.run_dir / "best.pt")


def save_last(loop: Loop) -> None:
    """last.pt, to resume from. Every rank calls it: it gathers each rank's random state and log
    window, for an exact resume."""
    state = loop.state
    state.log_window = loop.window.saved()
    state.train_seconds = time.perf_counter() - loop.started
    rng_ranks = distributed.gather_to_main(rng_state())
    log_windows = distributed.gather_to_main(state.log_window)
    if not loop.main:
        return
    ckpt = checkpoint_state(
        loop.cfg,
        loop.data.vocab,
        loop.model,
        state,
        dev=None,
        optimizer=loop.optimizer,
        scheduler=loop.scheduler,
        sampler=loop.sampler.state_dict(batches_consumed=loop.consumed),
        rng_ranks=rng_ranks,
        log_windows=log_windows,
        averaged=loop.averaged,
    )
    save_checkpoint(ckpt, loop.run_dir / "last.pt")


def dry_run(cfg: Config, data: Data, model: NLIClassifier, device: torch.device) -> None:
    """One forward and backward pass on one training batch; nothing is written."""
    indices = next(iter(setup_sampler(cfg, data)))
    batch = collate_nli([data.train.dataset[i] for i in indices], schedule=True).to(device)
    model.train()
    with bf16_autocast(cfg.train.bf16, device):  # as in training
        loss = model.loss(model(batch), batch.labels)
    loss.backward()
    print(
        f"dry run: one batch of {len(batch)} pairs, loss {loss.item():.4f}; config, data and model are fine"
    )


# ---------------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train SPINN (or a baseline encoder) on NLI or sentence classification (SST, ListOps).",
        epilog="example: python scripts/train.py --config configs/small.yaml --set optim.lr=1e-3",
    )
    parser.add_argument(
        "--config",
        help="a YAML file, or a shipped config's name (spinn configs lists them); optional with --resume",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. optim.lr=1e-3",
    )
    parser.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=N")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, data and model on one batch; write no run folder (data caches may be built)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a train.out_dir that holds one, deleting the old run's files",
    )
    return parser


def check_compile(device: torch.device) -> None:
    """torch.compile's default backend (inductor) builds C++ for the CPU: without a compiler it fails
    at the first step, with a long traceback. Say so before training starts."""
    if device.type != "cpu":
        return
    try:  # inductor's own search (g++, or $CXX); a torch without it gets no early check
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:
        return
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        raise SpinnError(
            "train.compile: torch.compile on the CPU needs a C++ compiler, and none was found (g++, or the "
            "one $CXX names): install one, or set train.compile=false"
        ) from None


def run_train(args: argparse.Namespace) -> int:
    if args.max_steps is not None:
        args.set.append(f"train.max_steps={args.max_steps}")
    if args.overwrite and args.resume is not None:
        raise SpinnError("--overwrite starts a new run over an old one; it cannot be combined with --resume")
    cfg, ckpt = setup_config(args)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    # Before any parallel work (the data's readers included).
    cli.set_threads(cfg.train.threads)
    device = setup_device(cfg, ckpt)
    seed_everything(cfg.train.seed)
    run_dir, resuming = Path(cfg.train.out_dir), ckpt is not None
    if not args.dry_run:  # before reading the data: a refusal to start over an existing run comes at once
        check_run_dir(run_dir, resuming, args.overwrite)
        if ckpt is not None:
            check_resumed_vocab(run_dir, ckpt)
    data = setup_data(cfg, Vocab.from_dict(ckpt["vocab"]) if ckpt else None)
    model = setup_model(cfg, data, device)
    if args.dry_run:
        dry_run(cfg, data, model, device)
        return 0
    # Created only now that the config, the data and the model are known to be fine.
    with own_run_dir(run_dir, resuming, args.overwrite):
        return train_run(cfg, ckpt, data, model, run_dir, device)


def setup_device(cfg: Config, ckpt: dict[str, Any] | None) -> torch.device:
    """The device (and the process group under torchrun), after the checks that need no data.

    Raises:
        SpinnError: a process count, batch size, compile or TensorBoard setting that cannot train.
    """
    device = distributed.setup(cli.resolve_device(cfg.train.device))
    if ckpt and "sampler" in ckpt:  # another process count is refused as such, not by its batch size
        distributed.sampler_state(ckpt["sampler"])
    # The global batch must split evenly over the ranks: fail now, before reading the data.
    local = distributed.local_batch_size(cfg.train.batch_size)
    if cfg.model.batch_norm and local < 2:
        raise SpinnError(
            f"train.batch_size {cfg.train.batch_size} gives {local} pair per process and batch norm "
            f"(model.batch_norm) cannot train on one: use at least {2 * distributed.world_size()}"
        )
    if cfg.train.bf16 and not bf16_applies(cfg.train.bf16, device):
        warnings.warn(f"train.bf16 applies on CUDA only; training in float32 on {device}", stacklevel=2)
    if cfg.train.compile:
        check_compile(device)
    check_tensorboard(cfg)
    return device


def train_run(
    cfg: Config,
    ckpt: dict[str, Any] | None,
    data: Data,
    model: NLIClassifier,
    run_dir: Path,
    device: torch.device,
) -> int:
    """Set up the optimiser and the log, train, summarise; return the exit status."""
    optimizer = setup_optimizer(cfg, model)
    scheduler = setup_scheduler(cfg, optimizer)
    sampler = setup_sampler(cfg, data)
    averaged = setup_averaged(cfg, model)
    state = restore(ckpt, model, optimizer, scheduler, sampler, averaged) if ckpt else TrainState()
    if ckpt is None and distributed.world_size() > 1:
        torch.manual_seed(cfg.train.seed + distributed.rank())  # each rank its own dropout masks
    if cli.is_main_process():
        save_config(cfg, run_dir / "config.yaml")  # a resume's resolved config (max_steps, lr, ...)
        if ckpt is None:
            data.vocab.save(run_dir / "vocab.json")
    log = setup_log(cfg, run_dir, state.step if ckpt else None)
    if ckpt:
        print(f"resuming {run_dir} at step {state.step} (epoch {state.epoch})")
    try:
        reason = train(cfg, data, model, optimizer, scheduler, sampler, state, log, run_dir, device, averaged)
    finally:
        log.close()
    interrupted = reason in INTERRUPTIONS
    summary = None if interrupted else summarize(cfg, data.test, model, state, reason, run_dir, device)
    # Every rank leaves the group together: a rank that exits while another still holds the group open
    # makes gloo abort that one.
    distributed.barrier()
    distributed.teardown()
    if interrupted:
        print(
            f"{reason} at step {state.step}: saved {run_dir / 'last.pt'}; continue with "
            f"python scripts/train.py --resume {run_dir}",
            file=sys.stderr,
        )
        return 128 + signal.Signals[reason].value
    if cli.is_main_process():
        report(run_dir, reason, state, summary)
    return 0


def report(run_dir: Path, reason: str, state: TrainState, summary: dict[str, Any]) -> None:
    """Draw the learning curve; print where the run ended and its best checkpoint's figures."""
    if plot_learning_curve(run_dir / "log.jsonl", run_dir / "learning_curve.png"):
        print(f"learning curve: {run_dir / 'learning_curve.png'}")
    else:
        print("matplotlib is not installed: no learning_curve.png (pip install matplotlib)")
    test = summary["test"]
    print(
        f"done ({reason}) after {state.step} steps in {state.train_seconds / 60:.1f} min; "
        f"best step {summary['best_step']}: dev acc {summary['dev']['accuracy']:.4f}"
        + (f", test acc {test['accuracy']:.4f}" if test else " (no test split)")
        + f"; summary: {run_dir / 'summary.json'}"
    )


def main(argv: list[str] | None = None) -> int:
    # Under torchrun: messages from rank 0 only, and the process group left however the run ends.
    with distributed.quiet_unless_main():
        try:
            return cli.run(build_parser(), run_train, argv)
        finally:
            distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
