"""Evaluate a trained checkpoint on a labelled split (NLI pairs or single sentences to classify):
accuracy, per-class scores, predictions.

    python scripts/evaluate.py --checkpoint runs/small --split dev
    python scripts/evaluate.py --checkpoint runs/small/best.pt --data multinli_1.0_dev_mismatched.jsonl

Prints accuracy, per-class precision/recall/F1, the confusion matrix and the number of rows skipped
for having no gold label (``-``); for the full SPINN also the parsing accuracy (agreement of its
predicted transitions with the given parses). Writes one JSON line per pair (pairID, gold, predicted,
probabilities) and a metrics JSON next to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from spinn import cli, distributed
from spinn.checkpoint import check_weights_fit, load_checkpoint
from spinn.config import Config, DataConfig, build_model, class_names, config_from_dict
from spinn.data.batching import BucketBatchSampler, NLIDataset, collate_nli
from spinn.data.cache import NLITable, load_nli, with_trivial_trees
from spinn.data.classify import read_classify
from spinn.data.snli import LABELS, read_nli
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.io import atomic_write, to_json, write_json
from spinn.model.classifier import NLIClassifier
from spinn.precision import bf16_autocast
from spinn.transitions import PAD


@dataclass
class Split:
    """One labelled file, numericalised, and the rows left out of it."""

    dataset: NLIDataset
    path: Path
    no_gold: int
    invalid: int
    #: Each pair's genre (MultiNLI), or None when the file has none.
    genres: list[str | None] | None = None


@dataclass
class EvalResult:
    """Predictions over a whole split, in the split's order.

    Attributes:
        probs: (N, n_classes) class probabilities; labels: (N,) gold label ids.
        loss: mean cross-entropy of the labels.
        parse_correct, parse_total: predicted transitions that agree with the given ones, over the
            real (non-PAD) steps of premises and hypotheses; 0, 0 without a transition predictor.
    """

    probs: torch.Tensor
    labels: torch.Tensor
    pair_ids: list[str]
    loss: float
    parse_correct: int = 0
    parse_total: int = 0

    @property
    def predictions(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        return (self.predictions == self.labels).float().mean().item() if len(self.labels) else 0.0

    @property
    def parse_accuracy(self) -> float | None:
        return self.parse_correct / self.parse_total if self.parse_total else None


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what is needed to feed it."""

    model: NLIClassifier
    vocab: Vocab
    config: Config
    path: Path
    step: int


def read_table(
    path: Path, data: DataConfig, *, task: str = "nli", phrases: bool = False, progress: bool = True
) -> NLITable:
    """Read one labelled file into columns: NLI pairs (cached when read whole) or, for task
    ``classify``, single sentences (`spinn.data.classify`). ``data.limit`` keeps the first examples;
    ``data.transitions`` replaces the parses by trivial trees.

    Args:
        phrases: classify, format sst: every labelled phrase is an example (``data.phrases``, for the
            training split).

    Raises:
        SpinnError: as `spinn.data.snli.read_nli` or `spinn.data.classify.read_classify`, or when the
            file has no labelled examples.
    """
    if task == "classify":
        found = read_classify(
            path,
            fmt=data.format,
            sst_labels=data.sst_labels,
            num_classes=data.num_classes,
            phrases=phrases,
            lowercase=data.lowercase,
            skip_invalid=data.skip_invalid,
            max_length=data.max_length,
            too_long=data.too_long,
            limit=data.limit,
        )
        table = NLITable.from_examples(
            found.examples, no_gold=found.no_gold, invalid=found.invalid, too_long=found.too_long
        )
        return with_trivial_trees(_refuse_empty(table, path, data, "sentences"), data.transitions)
    options = dict(
        lowercase=data.lowercase,
        skip_invalid=data.skip_invalid,
        progress=progress,
        max_length=data.max_length,
        too_long=data.too_long,
        check_text=data.check_text,
    )
    if data.limit is None:
        table = load_nli(path, cache_dir=data.cache_dir, **options)
    else:
        # A limited read is for smoke tests: the first pairs, uncached.
        nli = read_nli(path, limit=data.limit, **options)
        table = NLITable.from_examples(
            nli.examples, no_gold=nli.no_gold, invalid=nli.invalid, too_long=nli.too_long
        )
    return with_trivial_trees(_refuse_empty(table, path, data, "sentence pairs"), data.transitions)


def _refuse_empty(table: NLITable, path: Path, data: DataConfig, what: str) -> NLITable:
    if len(table) == 0:
        raise SpinnError(
            f"{path}: no usable {what}, expected at least one; found {table.no_gold} row(s) without "
            f"a gold label (or a neutral one in binary SST), {table.invalid} invalid row(s) skipped "
            f"(data.skip_invalid) and {table.too_long if data.too_long == 'skip' else 0} over "
            "data.max_length skipped"
        )
    return table


def load_split(
    path: Path, data: DataConfig, vocab: Vocab, *, task: str = "nli", progress: bool = True
) -> Split:
    """`read_table`, with words mapped to `vocab` ids."""
    table = read_table(path, data, task=task, progress=progress)
    return Split(NLIDataset(table, vocab), path, table.no_gold, table.invalid, table.genres)


@torch.no_grad()
def evaluate(
    model: NLIClassifier,
    dataset: NLIDataset,
    *,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "eval",
) -> EvalResult:
    """Run `model` over every pair of `dataset` (batched by length) and collect its predictions.

    In a distributed run each rank scores its shard (`spinn.distributed.shard`) and every rank
    returns the figures of the whole split, summed over the ranks: each pair counted once.
    The model is left in eval mode; the caller switches back to training.
    """
    model.eval()
    n = len(dataset)
    probs = torch.zeros(n, model.n_classes)
    labels = torch.zeros(n, dtype=torch.long)
    total_loss = 0.0
    parse_correct = parse_total = 0
    distributed.broadcast_buffers(model)  # every rank scores with rank 0's batch-norm statistics
    mine = distributed.shard(n)  # (n / K,) this rank's pairs; all of them in a single process
    sampler = BucketBatchSampler(dataset.lengths[mine], batch_size, shuffle=False)
    autocast = bf16_autocast(bf16, device)  # as in training: bf16 on CUDA only
    for local in tqdm(sampler, desc=desc, leave=False, disable=not progress, unit="batch"):
        indices = mine[local].tolist()
        batch = collate_nli([dataset[i] for i in indices], schedule=True).to(device)
        with autocast:
            out = model(batch)
        logits = out.logits.float()
        total_loss += F.cross_entropy(logits, batch.labels, reduction="sum").item()
        rows = torch.as_tensor(indices)
        probs[rows] = logits.softmax(dim=1).cpu()
        labels[rows] = batch.labels.cpu()
        for side, sentences in ((out.premise, batch.premise), (out.hypothesis, batch.hypothesis)):
            if side is not None and side.predicted_transitions is not None:
                given = sentences.transitions  # (B, T); the prediction may be wider (padded to the pair)
                predicted = side.predicted_transitions[:, : given.shape[1]]
                real = given != PAD
                parse_correct += int(((predicted == given) & real).sum())
                parse_total += int(real.sum())
    # Rows of other ranks' pairs are zero here, so sums over the ranks fill in the whole split.
    sums = torch.tensor([total_loss, parse_correct, parse_total], dtype=torch.float64)
    probs, labels, sums = distributed.sum_over_ranks(probs, labels, sums)
    total_loss, parse_correct, parse_total = sums[0].item(), int(sums[1]), int(sums[2])
    return EvalResult(probs, labels, dataset.pair_ids, total_loss / max(n, 1), parse_correct, parse_total)


def classification_report(
    labels: torch.Tensor, predictions: torch.Tensor, names: Sequence[str] = LABELS
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, macro F1, and the confusion matrix.

    ``confusion[i][j]`` counts examples of gold class i predicted as class j (classes in `names` order).
    """
    k = len(names)
    confusion = torch.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    per_class = {}
    for i, name in enumerate(names):
        tp = int(confusion[i, i])
        predicted, gold = int(confusion[:, i].sum()), int(confusion[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": gold}
    return {
        "per_class": per_class,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / k,
        "confusion": confusion.tolist(),
    }


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """Rebuild the model a checkpoint (or a run folder's best.pt) describes, in eval mode on `device`.

    Raises:
        SpinnError: the checkpoint cannot be read, or its weights do not fit the model its config builds.
    """
    ckpt = load_checkpoint(path)
    where = Path(path) / "best.pt" if Path(path).is_dir() else Path(path)
    cfg = config_from_dict(ckpt["config"], f"{where}: config")
    vocab = Vocab.from_dict(ckpt["vocab"])
    model = build_model(cfg, len(vocab))
    check_weights_fit(model, ckpt["model"], str(where))
    model.load_state_dict(ckpt["model"])
    return LoadedModel(model.to(device).eval(), vocab, cfg, where, int(ckpt["step"]))


def write_predictions(path: Path, result: EvalResult, names: Sequence[str] = LABELS) -> None:
    """One JSON line per example: pairID (an id, for single sentences ``file:line``), gold and
    predicted label, and the class probabilities.

    Raises:
        SpinnError: the file cannot be written, or a probability is not finite; `path` keeps its old
            contents.
    """
    with atomic_write(path, what="the predictions") as f:
        for pair_id, gold, pred, probs in zip(
            result.pair_ids,
            result.labels.tolist(),
            result.predictions.tolist(),
            result.probs.tolist(),
            strict=True,
        ):
            record = {
                "pairID": pair_id,
                "gold_label": names[gold],
                "predicted_label": names[pred],
                "probabilities": {name: round(p, 6) for name, p in zip(names, probs, strict=True)},
            }
            f.write(to_json(record, what=f"{path}: pair {pair_id}") + "\n")


def split_metrics(result: EvalResult, split: Split) -> dict[str, Any]:
    """The figures of one whole-split evaluation, as checkpoints and summary.json store them."""
    return {
        "file": str(split.path),
        "pairs": len(result.labels),
        "accuracy": result.accuracy,
        "loss": result.loss,
        "parse_accuracy": result.parse_accuracy,
    }


def metrics(result: EvalResult, split: Split, names: Sequence[str] = LABELS) -> dict[str, Any]:
    """The figures `scripts/evaluate.py` prints and writes, as plain data."""
    return {
        **split_metrics(result, split),
        "skipped_no_gold": split.no_gold,
        "skipped_invalid": split.invalid,
        **classification_report(result.labels, result.predictions, names),
        "per_genre": None if split.genres is None else genre_accuracy(result, split.genres),
    }


def genre_accuracy(result: EvalResult, genres: list[str | None]) -> dict[str, dict[str, float | int]]:
    """Accuracy and pair count for each genre (MultiNLI reports its results by genre), sorted by name;
    pairs without a genre count as "none"."""
    correct = (result.predictions == result.labels).tolist()
    out: dict[str, list[int]] = {}
    for genre, right in zip(genres, correct, strict=True):
        tally = out.setdefault(genre or "none", [0, 0])
        tally[0] += right
        tally[1] += 1
    return {g: {"accuracy": c / n, "pairs": n} for g, (c, n) in sorted(out.items())}


def format_report(m: dict[str, Any]) -> str:
    """A human-readable table of `metrics`."""
    lines = [
        f"{m['file']}: {m['pairs']} {m.get('unit', 'pairs')} ({m['skipped_no_gold']} rows without a gold "
        "label skipped"
        + (f", {m['skipped_invalid']} invalid rows skipped)" if m["skipped_invalid"] else ")"),
        f"accuracy {m['accuracy']:.4f}   loss {m['loss']:.4f}   macro F1 {m['macro_f1']:.4f}",
    ]
    if m["parse_accuracy"] is not None:
        lines.append(
            f"parsing accuracy (transitions agreeing with the given parses) {m['parse_accuracy']:.4f}"
        )
    lines.append(f"{'':15}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>10}")
    for name, c in m["per_class"].items():
        lines.append(f"{name:15}{c['precision']:10.4f}{c['recall']:10.4f}{c['f1']:10.4f}{c['support']:10d}")
    names = list(m["per_class"])
    lines.append("confusion (rows gold, columns predicted): " + "  ".join(f"{n[:4]}" for n in names))
    for name, row in zip(names, m["confusion"], strict=True):
        lines.append(f"  {name:13}" + "".join(f"{v:8d}" for v in row))
    if m["per_genre"]:
        lines.append(
            "accuracy by genre: "
            + ", ".join(f"{g} {v['accuracy']:.4f} ({v['pairs']})" for g, v in m["per_genre"].items())
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Entry point: build and check the arguments, set up the model and data, evaluate, save.
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a spinn checkpoint on a labelled split: sentence pairs (NLI) or, for a "
        "classify checkpoint, single sentences (SST trees, label<TAB>parse TSV such as ListOps).",
        epilog="example: python scripts/evaluate.py --checkpoint runs/small --split dev",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint file, or a run folder (its best.pt)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", choices=("dev", "test"), default="dev", help="a split of the run's config")
    which.add_argument(
        "--data",
        help="any labelled file instead of --split, read whole (the config's data.limit applies to its "
        "splits only): an SNLI/MultiNLI .jsonl or .txt for NLI; for classify, a file in the config's "
        "data.format (sst trees, or tsv label<TAB>parse lines)",
    )
    parser.add_argument("--data-dir", help="override the config's data.data_dir for --split")
    parser.add_argument(
        "--transitions",
        choices=("predicted", "given"),
        help="full SPINN only: follow its own predicted transitions or the given parses "
        "(default: the config's model.eval_given_transitions)",
    )
    parser.add_argument("--batch-size", type=int, help="default: the config's train.eval_batch_size")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--output", help="predictions JSON lines (default: predictions_<split>.jsonl next to the checkpoint)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--threads", type=cli.threads_argument, default=None, metavar="N|auto", help=cli.THREADS_HELP
    )
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    cli.set_threads(args.threads)
    device = cli.resolve_device(args.device)
    loaded = load_model(args.checkpoint, device)
    cfg = loaded.config
    _apply_model_arguments(args, loaded)
    path, name = _file_to_score(args, cfg.data)
    # The run's splits are scored as the run scored them; any other file is scored whole.
    data = replace(cfg.data, limit=None) if args.data else cfg.data
    split = load_split(path, data, loaded.vocab, task=cfg.task, progress=not args.no_progress)
    start = time.perf_counter()
    result = evaluate(
        loaded.model,
        split.dataset,
        batch_size=args.batch_size or cfg.train.eval_batch_size,
        device=device,
        progress=not args.no_progress,
        desc=name,
    )
    names = class_names(cfg)
    m = metrics(result, split, names)
    m.update(checkpoint=str(loaded.path), step=loaded.step, seconds=round(time.perf_counter() - start, 2))
    m["unit"] = "pairs" if cfg.task == "nli" else "sentences"
    if cfg.model.variant == "spinn":
        m["transitions"] = "given" if loaded.model.eval_given_transitions else "predicted"
    print(format_report(m))

    output = Path(args.output) if args.output else loaded.path.parent / f"predictions_{name}.jsonl"
    write_predictions(output, result, names)
    metrics_path = output.with_suffix(".metrics.json")
    write_json(metrics_path, m, what="the metrics")
    print(f"predictions: {output}\nmetrics: {metrics_path}", file=sys.stderr)
    return 0


def _apply_model_arguments(args: argparse.Namespace, loaded: LoadedModel) -> None:
    """Check --transitions and --batch-size against the checkpoint, and set the transitions to follow."""
    if args.transitions is not None:
        if loaded.config.model.variant != "spinn":
            raise SpinnError(
                f"--transitions applies to the full SPINN only; this checkpoint is "
                f"{loaded.config.model.variant!r}, which always follows the given parses"
            )
        loaded.model.eval_given_transitions = args.transitions == "given"
    if args.batch_size is not None and args.batch_size < 1:
        raise SpinnError(f"--batch-size: expected a value > 0, found {args.batch_size}")


def _file_to_score(args: argparse.Namespace, data: DataConfig) -> tuple[Path, str]:
    """(path, name): the file --data or --split names, and the name its outputs carry.

    Raises:
        SpinnError: a split the config does not have, or one missing because of a relative data.data_dir.
    """
    if args.data_dir is not None:
        data.data_dir = args.data_dir
    path = Path(args.data) if args.data else data.path(getattr(data, args.split))
    if path is None:
        raise SpinnError(
            f"the run's config has no {args.split} split (data.{args.split} is null); use --data FILE"
        )
    if not args.data and not path.exists() and not data.root().is_absolute():
        raise SpinnError(
            f"{path}: no such file; the run's config has data.data_dir {data.data_dir!r}, which is read "
            f"relative to the current folder ({Path.cwd()}): run from the folder it trained in, or pass "
            "--data-dir DIR"
        )
    name = Path(path.name.removesuffix(".gz")).stem if args.data else args.split
    if args.transitions is not None:  # the two ways of reading a split do not overwrite each other
        name += f"_{args.transitions}"
    return path, name


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
