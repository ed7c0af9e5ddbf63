"""Self-describing checkpoints: tensors and plain containers only, written atomically.

A checkpoint is a dict (`FORMAT_VERSION` 1)::

    format_version  int
    config          the resolved config as nested plain data (`spinn.config.config_to_dict`)
    vocab           the vocabulary as plain data (`spinn.data.vocab.Vocab.to_dict`)
    model           the model's state_dict: the weights to evaluate (with optim.ema_decay, their
                    moving average)
    online_model    the optimiser's weights, when model holds their average (training only)
    optimizer       the optimiser's state_dict          (training checkpoints only)
    scheduler       the LR scheduler's state_dict       (training checkpoints only)
    sampler         the batch sampler's state_dict      (training checkpoints only)
    rng             torch / CUDA / numpy / python RNG states as tensors and lists (training only)
    state           the loop's position: step, epoch, best dev accuracy and its step, evaluations
                    since the best (`spinn.train_state.TrainState`)
    step, epoch     optimiser steps done; the epoch the next batch belongs to
    best_dev_acc    best dev accuracy so far (null before the first evaluation)
    dev             dev accuracy and loss of these weights (best.pt; null in last.pt)
    torch_version   the torch that wrote it, for diagnostics

Nothing else is pickled, so `load_checkpoint` reads with ``torch.load(..., weights_only=True)``: a
file crafted to run code when unpickled is refused instead of executed.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinn.errors import SpinnError
from spinn.io import WriteError, atomic_write, check_readable

FORMAT_VERSION = 1
#: The keys every checkpoint has; training checkpoints add optimizer, scheduler and sampler.
REQUIRED_KEYS = ("format_version", "config", "vocab", "model", "step")


class CheckpointError(SpinnError):
    """A checkpoint that is missing, unreadable, of another format version, or not a checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` (plus ``format_version`` and ``torch_version``) to `path` atomically
    (`spinn.io.atomic_write`): a crash at any moment leaves either the old checkpoint or the new one, whole.

    Raises:
        CheckpointError: the file cannot be written (a full disk), or a weight is NaN or infinite; the
            previous one is intact.
    """
    check_finite_weights(state, f"{path}: refused to write the checkpoint")
    payload = {"format_version": FORMAT_VERSION, "torch_version": str(torch.__version__), **state}
    try:
        with atomic_write(path, binary=True, what="the checkpoint") as f:
            torch.save(payload, f)
    except WriteError as err:
        raise CheckpointError(str(err)) from None


def any_non_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor, True when some of `tensors` hold a NaN or an infinity, without a host sync.

    One sum per tensor and one over them: a NaN or an infinity anywhere makes the total non-finite.
    Finite values whose total overflows also give True: confirm with `first_non_finite` before saying so.
    """
    return ~torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum().isfinite()


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The first floating tensor with a NaN or an infinity, as "'name' (k of n values)"; None when none."""
    for name, tensor in named:
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return f"{name!r} ({bad} of {tensor.numel()} values)"
    return None


def check_finite_weights(ckpt: dict[str, Any], where: str) -> None:
    """Every weight and buffer of a checkpoint's model (and online model) is finite.

    Raises:
        CheckpointError: naming the first tensor with a NaN or an infinity.
    """
    for key in ("model", "online_model"):
        bad = first_non_finite(ckpt.get(key, {}).items())
        if bad is not None:
            raise CheckpointError(
                f"{where}: {key} tensor {bad} is NaN or infinite; these weights cannot be evaluated or "
                f"trained on (use a checkpoint written before the training diverged)"
            )


def check_weights_fit(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Check that a checkpoint's `weights` have exactly the names and shapes of `model`'s.

    Raises:
        CheckpointError: naming the first weight that is missing, unexpected or of another shape.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the weights do not fit the model its config builds: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, tensor in own.items():
        if weights[name].shape != tensor.shape:
            raise CheckpointError(
                f"{where}: model weight {name!r} has shape {tuple(weights[name].shape)} in the checkpoint, "
                f"but the model its config builds expects {tuple(tensor.shape)}"
            )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, safely (``weights_only=True``).

    `path` may be a run folder, meaning its ``best.pt``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds anything but tensors and
            plain containers, lacks a required key, is of another format version, or holds a NaN or
            infinite weight.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    try:
        check_readable(path, "checkpoint file")
    except SpinnError as err:
        raise CheckpointError(str(err)) from None
    # torch.save writes a zip archive; anything else (a truncated or damaged file) is not one of ours.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): expected the zip archive torch.save "
            f"writes"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # Only the name of the object: torch's message goes on to explain how to load it anyway.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"a reference to {found.group(1)}" if found else "an object torch refuses to unpickle"
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers ({what}); "
            f"spinn writes none, so this file was altered or written by something else"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {err}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a spinn checkpoint: missing key(s) {', '.join(missing)}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt['format_version']!r}, this spinn reads version "
            f"{FORMAT_VERSION}"
        )
    check_finite_weights(ckpt, str(path))
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every random number generator a run draws from, as tensors and plain lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached_gaussian": cached,
        },
        "python": {"version": version, "state": list(mt), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
