"""Encoder speed: our SPINN against a seed-style reference and against the arithmetic ceiling.

    python benchmarks/bench_model.py [--quick] [--data ../shared/data] [--threads 1] [--json bench_model.json]

Everything is measured in one run, side by side (ours and the reference alternate within each
repetition, so a change in the machine's load hits both), as medians over repetitions after a warm-up
call of every implementation: a first call pays for memory the allocator has not handed out yet, so
no ratio is ever taken against a cold run:

* training (forward + backward + RMSprop step of the NLI classifier) and evaluation (forward, no grad)
  throughput in sentence pairs/s on real SNLI pairs bucketed as in training, for each variant, batch
  size and d_hidden (300 with a Tracker of 64, and 100); both models hold the same weights, and the
  largest difference of their logits on the first batch is reported as a cross-check;
* the arithmetic ceiling: the batch's multiply-adds (the model's matmuls over the real transition steps,
  x3 for training) divided by the torch.matmul throughput measured in this run at each matmul's shape;
* memory per batch: peak allocated on a GPU, on the CPU the bytes autograd saves for the backward;
* time per token for sentences of 10, 20, 40 and 80 words (it should stay flat: linear cost).

``--threads`` sets torch's intra-op threads (default 1): on a 2-core machine shared with other jobs,
two OpenMP threads wait on each other at every kernel and time out to milliseconds per op.
``--device cuda --amp bf16 [--compile]`` is what ``benchmarks/gpu.sh`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spinn.data.batching import (
    BucketBatchSampler,
    NLIBatch,
    NLIDataset,
    collate_nli,
    pad_sentences,
    pair_sentences,
)
from spinn.data.snli import read_nli
from spinn.data.vocab import Vocab
from spinn.model import NLIClassifier, build_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_spinn import load_from_classifier, reference_for  # noqa: E402

SIZES = {300: 64, 100: 64}  # d_hidden: d_tracker
D_EMBED = 300
MLP_DIM = 1024


@dataclass
class Setup:
    device: torch.device
    amp: torch.dtype | None
    reps: int
    n_batches: int | None
    compile: bool = False


def load_pairs(data: Path) -> tuple[NLIDataset, int]:
    examples = read_nli(data / "snli_1.0" / "snli_1.0_train_0.01.jsonl", progress=False).examples
    vocab = Vocab.build(t for ex in examples for t in (ex.premise, ex.hypothesis))
    return NLIDataset(examples, vocab), len(vocab)


def real_batches(dataset: NLIDataset, batch_size: int, n: int) -> list[NLIBatch]:
    """The first n full batches of a training epoch (bucketed by length), schedules precomputed."""
    sampler = BucketBatchSampler(dataset.lengths, batch_size, seed=0, drop_last=True)
    batches = []
    for indices in sampler:
        batches.append(collate_nli([dataset[i] for i in indices], schedule=True))
        if len(batches) == n:
            break
    return batches


def make_model(vocab_size: int, d_hidden: int, variant: str) -> NLIClassifier:
    torch.manual_seed(0)
    return NLIClassifier(
        vocab_size,
        d_embed=D_EMBED,
        d_hidden=d_hidden,
        d_tracker=SIZES[d_hidden],
        variant=variant,
        mlp_dim=MLP_DIM,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_fns(model, batches: list[NLIBatch], setup: Setup) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train over the batches, evaluate over the batches), for ours or the reference."""
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.RMSprop(params, lr=1e-3)
    amp = torch.autocast(setup.device.type, dtype=setup.amp, enabled=setup.amp is not None)

    def train() -> None:
        model.train()
        for batch in batches:
            with amp:
                loss = model.loss(model(batch), batch.labels)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        sync(setup.device)

    def evaluate() -> None:
        model.eval()
        with torch.no_grad(), amp:
            for batch in batches:
                model(batch)
        sync(setup.device)

    return train, evaluate


def side_by_side(fns: dict[str, Callable[[], float | None]], reps: int) -> dict[str, float]:
    """Median seconds of each fn after one warm-up call of every fn, alternating the fns within each
    repetition.

    A fn that returns a number reports its own seconds (the ceiling probes); the others are timed.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            reported = fn()
            times[k].append(time.perf_counter() - t if reported is None else reported)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak allocated bytes on a GPU; on the CPU the distinct storage bytes autograd saves for backward."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def memory_mb(model, batch: NLIBatch, setup: Setup) -> float:
    return saved_bytes(step_fns(model, [batch], setup)[0], setup.device) / 2**20


# ----------------------------------------------------------------------------- arithmetic ceiling


def sentence_lengths(batches: list[NLIBatch]) -> list[int]:
    return [n for b in batches for s in (b.premise, b.hypothesis) for n in s.lengths.tolist()]


def matmuls(batches: list[NLIBatch], d: int, dt: int | None, predict: bool, train: bool):
    """[(M, K, N, count)]: the matmuls of the batches at their shapes (forward, and backward if train).

    Counts only the real transition steps (2n - 1 per sentence). Shapes: the Tracker runs on all the
    batch's sentences at once; Reduce on the REDUCEs of one step (one tree level without a Tracker),
    whose mean count per call sets M; weight gradients over a whole batch at once (no sequential
    dependence); the leaves over all words; the MLP over the pairs.
    """
    out = []
    pairs = sum(len(b) for b in batches)
    for b in batches:
        sched = b.schedule
        n_sent = sched.batch_size
        lengths = b.premise.lengths.tolist() + b.hypothesis.lengths.tolist()
        words = sum(lengths)
        steps = sum(2 * n - 1 for n in lengths)
        reduces = words - n_sent
        offsets = sched.level_offsets if dt is None else sched.step_offsets
        calls = sum(1 for lo, hi in zip(offsets[:-1], offsets[1:], strict=True) if hi > lo)
        m_reduce = max(1, round(reduces / max(calls, 1)))
        layers = [(words, D_EMBED, 2 * d, 1, False)]  # leaves; frozen embeddings need no input grad
        layers.append((m_reduce, 2 * d + (dt or 0), 5 * d, reduces / m_reduce, True))
        if dt is not None:
            layers.append((n_sent, 3 * d + dt, 4 * dt, steps / n_sent, True))
            if predict:
                layers.append((n_sent, dt, 2, steps / n_sent, True))
        layers += [(len(b), 4 * d, MLP_DIM, 1, True), (len(b), MLP_DIM, 3, 1, True)]
        for m, k, n, count, input_grad in layers:
            out.append((m, k, n, count))
            if train:
                total = round(m * count)
                out.append((n, total, k, 1))  # weight gradient over all calls at once
                if input_grad:
                    out.append((m, n, k, count))
    return out, pairs


def ceiling_probe(batches, d, dt, predict, train, setup: Setup) -> tuple[float, Callable[[], float]]:
    """(multiply-adds per pair, a function that times each distinct matmul shape once now and returns
    the seconds the batches' matmuls would take at those rates).

    The probe runs inside the timed repetitions, so the ceiling sees the same machine load as the models.
    """
    shapes, pairs = matmuls(batches, d, dt, predict, train)
    macs = sum(m * k * n * c for m, k, n, c in shapes)
    dtype = setup.amp or torch.float32
    calls: dict[tuple[int, int, int], float] = {}
    for m, k, n, c in shapes:
        calls[(m, k, n)] = calls.get((m, k, n), 0.0) + c
    operands = {
        key: (
            torch.randn(key[0], key[1], device=setup.device, dtype=dtype),
            torch.randn(key[1], key[2], device=setup.device, dtype=dtype),
        )
        for key in calls
    }

    def seconds() -> float:
        total = 0.0
        for key, count in calls.items():
            a, b = operands[key]
            reps = max(1, min(20, round(count)))
            torch.matmul(a, b)
            sync(setup.device)
            t = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b)
            sync(setup.device)
            total += (time.perf_counter() - t) / reps * count
        return total

    return macs / pairs, seconds


# ----------------------------------------------------------------------------- runs


def default_batches(batch_size: int, quick: bool) -> int:
    """Batches per repetition: more at small sizes, where one batch's sentence lengths would otherwise
    set the ratio, one from 512 on."""
    if quick or batch_size >= 512:
        return 1
    return 4 if batch_size <= 32 else 2


def throughput(dataset, vocab_size, args, setup: Setup, rows: list[dict], save: Callable[[], None]) -> None:
    """Measure each variant, d_hidden and batch size; append a row to `rows` and `save` after each."""
    for d in args.d_hidden:
        for variant in args.variants:
            model = make_model(vocab_size, d, variant).to(setup.device)
            ref = reference_for(model).to(setup.device)
            # The compiled handle runs the model; the weights are copied through the model itself.
            runner = torch.compile(model, dynamic=True) if setup.compile else model
            for bs in args.batch_sizes:
                n_batches = setup.n_batches or default_batches(bs, args.quick)
                batches = [b.to(setup.device) for b in real_batches(dataset, bs, n_batches)]
                # Training with dropout moves the two models apart; the cross-check starts from equal weights.
                load_from_classifier(ref, model)
                model.eval(), ref.eval()
                with torch.no_grad():
                    diff = (model(batches[0]).logits - ref(batches[0])[0]).abs().max().item()
                ours_train, ours_eval = step_fns(runner, batches, setup)
                ref_train, ref_eval = step_fns(ref, batches, setup)
                dt = None if variant == "spinn_pi_nt" else SIZES[d]
                macs, probe_train = ceiling_probe(batches, d, dt, variant == "spinn", True, setup)
                _, probe_eval = ceiling_probe(batches, d, dt, variant == "spinn", False, setup)
                secs = side_by_side(
                    {
                        "ours_train": ours_train,
                        "ref_train": ref_train,
                        "ceil_train": probe_train,
                        "ours_eval": ours_eval,
                        "ref_eval": ref_eval,
                        "ceil_eval": probe_eval,
                    },
                    setup.reps,
                )
                pairs = bs * len(batches)
                ceil_train, ceil_eval = pairs / secs["ceil_train"], pairs / secs["ceil_eval"]
                row = {
                    "d_hidden": d,
                    "variant": variant,
                    "batch": bs,
                    "macs_per_pair_fwd": macs / 3,
                    "max_logit_diff": diff,
                    "ours_mem_mb": memory_mb(runner, batches[0], setup),
                    "ref_mem_mb": memory_mb(ref, batches[0], setup),
                }
                for mode, ceil in (("train", ceil_train), ("eval", ceil_eval)):
                    ours, theirs = pairs / secs[f"ours_{mode}"], pairs / secs[f"ref_{mode}"]
                    row |= {
                        f"{mode}_ours": ours,
                        f"{mode}_ref": theirs,
                        f"{mode}_ratio": ours / theirs,
                        f"{mode}_ceiling": ceil,
                        f"{mode}_ours_of_ceiling": ours / ceil,
                        f"{mode}_ref_of_ceiling": theirs / ceil,
                    }
                rows.append(row)
                save()
                print(format_row(row), flush=True)


def synthetic_batch(n_words: int, batch_size: int, vocab_size: int, seed: int) -> NLIBatch:
    """batch_size pairs of n_words-word sentences with uniformly drawn valid parses."""
    rng = random.Random(seed)

    def parse() -> list[int]:
        out, depth, shifted = [], 0, 0
        while len(out) < 2 * n_words - 1:
            shift = shifted < n_words and (depth < 2 or rng.random() < 0.5)
            out.append(0 if shift else 1)
            depth, shifted = depth + (1 if shift else -1), shifted + shift
        return out

    def side():
        ids = [[rng.randrange(2, vocab_size) for _ in range(n_words)] for _ in range(batch_size)]
        return pad_sentences(ids, [parse() for _ in range(batch_size)])

    items_p, items_h = side(), side()
    batch = NLIBatch(
        items_p, items_h, torch.tensor([rng.randrange(3) for _ in range(batch_size)]), [""] * batch_size
    )
    pairs = pair_sentences(batch)
    batch.schedule = build_schedule(pairs.transitions, pairs.lengths)
    return batch


def per_token(vocab_size, args, setup: Setup, rows: list[dict], save: Callable[[], None]) -> None:
    d = 300
    model = make_model(vocab_size, d, "spinn_pi").to(setup.device)
    for n in (10, 20, 40, 80):
        batch = synthetic_batch(n, args.token_batch, vocab_size, seed=n).to(setup.device)
        train, evaluate = step_fns(model, [batch], setup)
        secs = side_by_side({"train": train, "eval": evaluate}, setup.reps)
        tokens = 2 * args.token_batch * n
        rows.append(
            {
                "words": n,
                "train_us_per_token": 1e6 * secs["train"] / tokens,
                "eval_us_per_token": 1e6 * secs["eval"] / tokens,
            }
        )
        save()
        print(
            f"  {n:3d} words: train {rows[-1]['train_us_per_token']:.1f} us/token, "
            f"eval {rows[-1]['eval_us_per_token']:.1f} us/token",
            flush=True,
        )


def format_row(r: dict) -> str:
    ref_mb = f"{r['ref_mem_mb']:.1f}"
    return (
        f"| {r['variant']:<11} | {r['d_hidden']:3d} | {r['batch']:4d} "
        f"| {r['train_ours']:7.0f} | {r['train_ref']:7.0f} | {r['train_ratio']:5.2f}x "
        f"| {r['train_ceiling']:7.0f} "
        f"| {100 * r['train_ours_of_ceiling']:3.0f}% / {100 * r['train_ref_of_ceiling']:3.0f}% "
        f"| {r['eval_ours']:7.0f} | {r['eval_ref']:7.0f} | {r['eval_ratio']:5.2f}x "
        f"| {100 * r['eval_ours_of_ceiling']:3.0f}% / {100 * r['eval_ref_of_ceiling']:3.0f}% "
        f"| {r['ours_mem_mb']:6.1f} / {ref_mb:>6} | {r['max_logit_diff']:.0e} |"
    )


HEADER = (
    "| variant     |   D | batch | train ours | ref | ratio | ceiling | ours / ref of ceiling "
    "| eval ours | ref | ratio | ours / ref of ceiling | MB ours / ref | max diff |\n"
    "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--quick", action="store_true", help="batch 128, SPINN-PI and -NT only, one batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "none"], default="none")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--d-hidden", type=int, nargs="+", default=None, choices=sorted(SIZES))
    parser.add_argument("--variants", nargs="+", default=None, choices=["spinn_pi_nt", "spinn_pi", "spinn"])
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--n-batches",
        type=int,
        default=None,
        help="batches per repetition (default 4 at batch 32, 2 at 128, 1 at 512)",
    )
    parser.add_argument("--token-batch", type=int, default=None, help="pairs per time-per-token batch")
    parser.add_argument("--compile", action="store_true", help="torch.compile our classifier (experimental)")
    parser.add_argument("--json", type=Path, default=Path("bench_model.json"))
    args = parser.parse_args()
    quick = args.quick
    args.batch_sizes = args.batch_sizes or ([128] if quick else [32, 128, 512])
    args.d_hidden = args.d_hidden or [300, 100]
    args.variants = args.variants or (
        ["spinn_pi", "spinn_pi_nt"] if quick else ["spinn_pi", "spinn_pi_nt", "spinn"]
    )
    args.token_batch = args.token_batch or (32 if quick else 64)
    torch.set_num_threads(args.threads)
    setup = Setup(
        device=torch.device(args.device),
        amp=torch.bfloat16 if args.amp == "bf16" else None,
        reps=args.reps or 5,
        n_batches=args.n_batches,
        compile=args.compile,
    )
    load_before = os.getloadavg()
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), "
        f"load average {load_before[0]:.1f}"
    )
    result = {
        "torch": torch.__version__,
        "device": args.device,
        "amp": args.amp,
        "threads": args.threads,
        "load_average": {"start": load_before, "end": None},
        "throughput": [],
        "per_token": [],
    }

    def save() -> None:
        # After every row, whole or not at all: a run cut short (a time limit on a borrowed GPU) keeps
        # what it measured.
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.json)

    dataset, vocab_size = load_pairs(args.data)
    print("pairs/s (median of", setup.reps, "repetitions after a warm-up);", "% of the arithmetic ceiling")
    print(HEADER)
    throughput(dataset, vocab_size, args, setup, result["throughput"], save)
    print("time per token, SPINN-PI, d_hidden 300, batch", args.token_batch)
    per_token(vocab_size, args, setup, result["per_token"], save)
    result["load_average"]["end"] = load_after = os.getloadavg()
    save()
    print(f"load average: {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end")
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
