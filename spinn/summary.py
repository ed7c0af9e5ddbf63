"""After training: the best checkpoint's figures on dev and test in summary.json, and the learning
curve from log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spinn import cli, distributed
from spinn.checkpoint import load_checkpoint
from spinn.config import Config
from spinn.evaluate import Split, evaluate, split_metrics
from spinn.io import atomic_write, write_json
from spinn.model.classifier import NLIClassifier
from spinn.train_state import TrainState


def summarize(
    cfg: Config,
    test_split: Split | None,
    model: NLIClassifier,
    state: TrainState,
    reason: str,
    run_dir: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Evaluate the best checkpoint on test and write summary.json with its dev and test figures.

    Its dev figures are those of the whole-dev evaluation that chose it (the same weights). In a
    distributed run every rank calls it: each scores its shard of the test split, rank 0 writes.
    """
    distributed.barrier()  # best.pt, written by rank 0, is complete before any rank reads it
    best = load_checkpoint(run_dir / "best.pt", map_location=device)
    test = None
    if test_split is not None:
        model.load_state_dict(best["model"])
        result = evaluate(
            model,
            test_split.dataset,
            batch_size=cfg.train.eval_batch_size,
            device=device,
            bf16=cfg.train.bf16,  # as the dev evaluations that chose it
            progress=cfg.train.progress and cli.is_main_process(),
            desc="best on test",
        )
        test = split_metrics(result, test_split)
    summary = {
        "stopped": reason,
        "steps": state.step,
        "epochs": state.epoch,
        "train_seconds": round(state.train_seconds, 3),  # ms: a short run rounds to 0.0 in tenths
        "best_step": best["step"],
        "best_checkpoint": str(run_dir / "best.pt"),
        "dev": best["dev"],
        "test": test,
    }
    if cli.is_main_process():
        write_json(run_dir / "summary.json", summary, what="the summary")
    return summary


def plot_learning_curve(log_path: Path, out: Path) -> bool:
    """Train loss and dev accuracy against steps, from log.jsonl; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    train = [r for r in records if r["split"] == "train"]
    dev = [r for r in records if r["split"] == "dev"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax_loss.plot([r["step"] for r in dev], [r["loss"] for r in dev], marker="o", label="dev")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.plot([r["step"] for r in train], [r["acc"] for r in train], label="train")
    ax_acc.plot([r["step"] for r in dev], [r["acc"] for r in dev], marker="o", label="dev")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_write(out, binary=True, what="the learning curve") as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)
    return True
