"""The cost of the per-step finite check (spinn.checkpoint.any_non_finite, then one host sync) that the
training loop runs after every optimiser step, at the paper's SPINN-PI sizes (configs/snli_spinn_pi.yaml).

    python benchmarks/bench_finite_check.py [--data ../shared/data] [--steps 40] [--out FILE.json]

Steps with and without the check alternate in one process on the same batches (real SNLI pairs, batch
32 and 128), so that load on the machine affects both alike; the figures are medians over the steps,
and the ratio is that of the medians. A step is forward, backward, gradient clipping and RMSprop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from spinn.checkpoint import any_non_finite
from spinn.config import build_model, load_config
from spinn.data.batching import BucketBatchSampler, NLIDataset, collate_nli
from spinn.data.snli import read_nli
from spinn.data.vocab import Vocab
from spinn.train import setup_optimizer

ROOT = Path(__file__).resolve().parents[1]


def one_step(model, optimizer, batch, watched, check: bool) -> float:
    start = time.perf_counter()
    loss = model.loss(model(batch), batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
    optimizer.step()
    if check and bool(any_non_finite(watched)):
        raise RuntimeError("the weights are not finite")
    return time.perf_counter() - start


def bench(batch_size: int, steps: int, data: Path) -> dict[str, float]:
    cfg = load_config(
        ROOT / "configs" / "snli_spinn_pi.yaml", ["vocab.glove=null", "model.freeze_embeddings=false"]
    )
    cfg.model.freeze_embeddings = True  # as with GloVe: random vectors stand in for its rows
    nli = read_nli(data / "snli_1.0" / "snli_1.0_train_0.01.jsonl", progress=False)
    vocab = Vocab.build(t for ex in nli.examples for t in (ex.premise, ex.hypothesis))
    dataset = NLIDataset(nli.examples, vocab)
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab), torch.randn(len(vocab), cfg.model.d_embed)).train()
    optimizer = setup_optimizer(cfg, model)
    watched = [p for p in model.parameters() if p.requires_grad]
    watched += [b for b in model.buffers() if b.is_floating_point()]
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=True, seed=0)
    indices = [idx for idx, _ in zip(sampler, range(steps + 2), strict=False)]
    batches = [collate_nli([dataset[i] for i in idx], schedule=True) for idx in indices]
    for batch in batches[:2]:  # warm-up
        one_step(model, optimizer, batch, watched, True)
    with_check, without = [], []
    for i, batch in enumerate(batches[2:]):
        order = (True, False) if i % 2 else (False, True)
        for check in order:
            (with_check if check else without).append(one_step(model, optimizer, batch, watched, check))
    check_alone = []
    for _ in range(steps):
        start = time.perf_counter()
        bool(any_non_finite(watched))
        check_alone.append(time.perf_counter() - start)
    return {
        "batch_size": batch_size,
        "steps": len(with_check),
        "weights_checked": sum(t.numel() for t in watched),
        "step_ms_without": 1e3 * statistics.median(without),
        "step_ms_with": 1e3 * statistics.median(with_check),
        "ratio": statistics.median(with_check) / statistics.median(without),
        "check_alone_ms": 1e3 * statistics.median(check_alone),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one thread gives steadier figures
    results = [bench(b, args.steps, args.data) for b in (32, 128)]
    for r in results:
        print(
            f"batch {r['batch_size']}: step {r['step_ms_without']:.1f} ms without the check, "
            f"{r['step_ms_with']:.1f} ms with it (ratio {r['ratio']:.3f}); the check alone "
            f"{r['check_alone_ms']:.2f} ms over {r['weights_checked']:,} weights and buffers; "
            f"{r['steps']} steps each"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
