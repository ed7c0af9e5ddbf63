"""Resuming a run: the checkpoint fixes the model, the vocabulary and the batch order; the rest of the
config may change (a longer run, another learning rate)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from spinn.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    load_config,
    validate,
)
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError

#: Settings a resumed run keeps from its checkpoint whatever the config says: they fix the model,
#: the vocabulary or the order of the batches.
FIXED_ON_RESUME = (
    "task",
    "model.",
    "vocab.",
    "data.train",
    "data.lowercase",
    "data.limit",
    "data.max_length",
    "data.too_long",
    "data.format",
    "data.sst_labels",
    "data.num_classes",
    "data.phrases",
    "data.transitions",
    "train.seed",
    "train.batch_size",
    "optim.name",
    "optim.ema_decay",
)


def resumed_config(run_dir: Path, ckpt: dict[str, Any], config: str | None, overrides: list[str]) -> Config:
    """The config a run resumed from `ckpt` (in `run_dir`, or its last.pt) trains with: `config` (or the
    checkpoint's own) with `overrides`, but the checkpoint's values of `FIXED_ON_RESUME`, with a warning
    where they differ.

    Raises:
        SpinnError: a bad config or override.
    """
    saved = config_from_dict(ckpt["config"], f"{run_dir}: checkpoint config")
    wanted = load_config(config, overrides) if config else apply_overrides(saved, overrides)
    # The checkpoint fixes the model, the vocabulary and the batch order; the rest may change.
    merged, kept = config_to_dict(wanted), config_to_dict(saved)
    for key, old, new in diff_configs(saved, wanted):
        if key.startswith(FIXED_ON_RESUME):
            warnings.warn(
                f"{key}: the checkpoint has {old!r}, the config {new!r}; resuming with {old!r}", stacklevel=2
            )
            section, _, name = key.partition(".")
            if name:
                merged[section][name] = kept[section][name]
            else:  # a top-level key such as task
                merged[section] = kept[section]
            if key == "data.train":  # relative to the checkpoint's data_dir, not the config's
                merged["data"]["train"] = str(saved.data.path(saved.data.train))
    cfg = config_from_dict(merged, f"{run_dir}: resumed config")
    out_dir = str(run_dir if run_dir.is_dir() else run_dir.parent)
    if any(o.startswith("train.out_dir=") for o in overrides):
        warnings.warn(f"train.out_dir: a resumed run stays in its folder, {out_dir}", stacklevel=2)
    cfg.train.out_dir = out_dir
    validate(cfg)
    return cfg


def check_resumed_vocab(run_dir: Path, ckpt: dict[str, Any]) -> None:
    """The run folder's vocab.json, written when the run started, must be the checkpoint's vocabulary:
    the same words in another order would give every embedding row another word.

    Raises:
        SpinnError: the two vocabularies differ.
    """
    path = run_dir / "vocab.json"
    if not path.exists():
        return
    if Vocab.load(path) != Vocab.from_dict(ckpt["vocab"]):
        raise SpinnError(
            f"{path}: not the vocabulary of the checkpoint to resume from (other words or another order); "
            f"the run folder and its checkpoint do not belong together"
        )
