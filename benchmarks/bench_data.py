"""Data pipeline speed: SNLI-train-sized reading and caching, and GloVe scanning.

    python benchmarks/bench_data.py [--data ../shared/data] [--glove-rows 400000]

Targets (issue 2, on a 2-core machine):
* read and numericalise 550,152 pairs (the size of SNLI 1.0 train) in under 20 s; reload from the
  cache in under 2 s. The file is made by repeating the real rows of the 1% training sample.
* GloVe: 2.2M rows (glove.840B.300d) with a ~40k-word vocabulary in under 30 s, extrapolated from the
  rows/s on a generated file of 400k rows x 300 dims.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from spinn.data.batching import NLIDataset
from spinn.data.cache import load_nli
from spinn.data.glove import load_glove
from spinn.data.snli import read_nli
from spinn.data.vocab import Vocab

SNLI_TRAIN_PAIRS = 550_152
GLOVE_840B_ROWS = 2_196_017


def bench_snli(sample: Path, tmp: Path) -> None:
    rows = sample.read_bytes().splitlines(keepends=True)
    big = tmp / "snli_train_sized.jsonl"
    with open(big, "wb") as f:
        f.writelines(itertools.islice(itertools.cycle(rows), SNLI_TRAIN_PAIRS))
    print(f"SNLI-sized file: {SNLI_TRAIN_PAIRS} rows ({big.stat().st_size / 1e6:.0f} MB) from {sample.name}")

    t0, c0 = time.perf_counter(), time.process_time()
    data = read_nli(big, progress=False)
    t1 = time.perf_counter()
    vocab = Vocab.build(t for ex in data.examples for t in (ex.premise, ex.hypothesis))
    dataset = NLIDataset(data.examples, vocab)
    t2, c2 = time.perf_counter(), time.process_time()
    n = len(dataset)
    print(
        f"read_nli + Vocab.build + NLIDataset: {t2 - t0:.1f} s wall, {c2 - c0:.1f} s CPU (read "
        f"{t1 - t0:.1f} s, numericalise {t2 - t1:.1f} s), {SNLI_TRAIN_PAIRS / (t2 - t0):,.0f} rows/s, "
        f"{n} pairs, {len(vocab)} words [target < 20 s]"
    )
    del data, dataset

    for workers in (1, 2):
        t0, c0 = time.perf_counter(), time.process_time()
        table = load_nli(big, cache_dir=tmp / "cache", progress=False, workers=workers, use_cache=False)
        vocab = Vocab.from_counts(table.counts())
        NLIDataset(table, vocab)
        t1, c1 = time.perf_counter(), time.process_time()
        print(
            f"load_nli (workers={workers}) + vocab + NLIDataset: {t1 - t0:.1f} s wall, {c1 - c0:.1f} s CPU "
            f"in the main process, {SNLI_TRAIN_PAIRS / (t1 - t0):,.0f} rows/s [target < 20 s]"
        )
    t0 = time.perf_counter()
    load_nli(big, cache_dir=tmp / "cache", progress=False, workers=2)
    print(f"load_nli writing the cache: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    table = load_nli(big, cache_dir=tmp / "cache", progress=False)
    vocab = Vocab.from_counts(table.counts())
    dataset = NLIDataset(table, vocab)
    t1 = time.perf_counter()
    print(
        f"cache reload + vocab + NLIDataset: {t1 - t0:.2f} s, {len(dataset) / (t1 - t0):,.0f} pairs/s "
        f"[target < 2 s]"
    )


def bench_glove(tmp: Path, n_rows: int, dim: int = 300, vocab_size: int = 40_000) -> None:
    rng = np.random.default_rng(0)
    # Lines are made from a pool of formatted vectors: writing 400k distinct rows of text takes minutes.
    pool = [" ".join(f"{v:.6f}" for v in row).encode() for row in rng.normal(0, 0.4, (1000, dim))]
    path = tmp / "glove.generated.txt"
    with open(path, "wb") as f:
        for i in range(n_rows):
            f.write(b"w%d %s\n" % (i, pool[i % len(pool)]))
    print(f"GloVe file: {n_rows} rows x {dim} dims ({path.stat().st_size / 1e9:.2f} GB)")
    words = [f"w{i}" for i in rng.choice(n_rows, vocab_size, replace=False)]
    vocab = Vocab(["<pad>", "<unk>", *words])
    t0, c0 = time.perf_counter(), time.process_time()
    res = load_glove(path, vocab, dim, progress=False, use_cache=False)
    t1, c1 = time.perf_counter(), time.process_time()
    # One word found (a vocabulary with none is an error): all but one row are scanned and skipped.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the low-coverage warning is expected here
        load_glove(path, Vocab(["<pad>", "<unk>", "w0"]), dim, progress=False, use_cache=False)
    t2 = time.perf_counter()
    # Converting the found rows to floats is a fixed cost (the vocabulary), scanning grows with rows.
    scan_rate = n_rows / (t2 - t1)
    estimate = (t1 - t0) + (GLOVE_840B_ROWS - n_rows) / scan_rate
    print(
        f"load_glove, {vocab_size} words: {t1 - t0:.1f} s wall, {c1 - c0:.1f} s CPU "
        f"({n_rows / (t1 - t0):,.0f} rows/s, found {res.found}/{res.total}); "
        f"scan only: {t2 - t1:.1f} s ({scan_rate:,.0f} rows/s)"
    )
    print(
        f"estimate for {GLOVE_840B_ROWS:,} rows and {vocab_size} words: {estimate:.1f} s; "
        f"linear in rows (pessimistic): {GLOVE_840B_ROWS * (t1 - t0) / n_rows:.1f} s [target < 30 s]"
    )
    t0 = time.perf_counter()
    load_glove(path, vocab, dim, progress=False, cache_dir=tmp / "cache")
    t1 = time.perf_counter()
    load_glove(path, vocab, dim, progress=False, cache_dir=tmp / "cache")
    t2 = time.perf_counter()
    print(f"load_glove with cache: first {t1 - t0:.1f} s, reload {t2 - t1:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    p.add_argument("--data", type=Path, default=default_data, help="the real data sample folder")
    p.add_argument("--glove-rows", type=int, default=400_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_snli(args.data / "snli_1.0" / "snli_1.0_train_0.01.jsonl", Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        bench_glove(Path(tmp), args.glove_rows)


if __name__ == "__main__":
    main()
