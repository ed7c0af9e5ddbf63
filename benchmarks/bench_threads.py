"""Training speed at different CPU thread counts: short runs of ``scripts/train.py``, interleaved.

    python benchmarks/bench_threads.py                          # threads 1, 2 and auto, 3 runs each
    python benchmarks/bench_threads.py --threads 1 4 auto --repeats 5 --steps 40

Each run trains ``configs/small.yaml`` (or ``--config``) for ``--steps`` steps on the first
``--limit`` pairs of each split, logging pairs/s every 5 steps (training time only); a run's figure is
the median of its windows after the first, which pays for warm-up. The runs take the settings in
turn (1, 2, auto, 1, 2, auto, ...), so that a change in the machine's load reaches every setting;
the table gives each setting's median over its runs, and the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_EVERY = 5


def run_once(config: str, threads: str, steps: int, limit: int, extra: list[str]) -> float:
    """The median pairs/s of one training run's log windows after the first."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"train.threads={'null' if threads == 'auto' else threads}",
            f"train.max_steps={steps}",
            f"train.log_every={LOG_EVERY}",
            f"train.eval_every={10 * steps}",
            f"data.limit={limit}",
            f"train.out_dir={out}/run",
            "train.progress=false",
            "train.tensorboard=false",
            *extra,
        ]
        command = [sys.executable, "scripts/train.py", "--config", config]
        command += [a for o in overrides for a in ("--set", o)]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"threads {threads}: training failed:\n{proc.stderr}")
        lines = (Path(out) / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines()
        rates = [r["examples_per_s"] for r in map(json.loads, lines) if r["split"] == "train"]
    return statistics.median(rates[1:] or rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/small.yaml")
    parser.add_argument("--threads", nargs="+", default=["1", "2", "auto"], help="counts, or auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--limit", type=int, default=640, help="pairs of each split (data.limit)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {t: [] for t in args.threads}
    for repeat in range(args.repeats):
        for threads in args.threads:
            rates[threads].append(run_once(args.config, threads, args.steps, args.limit, args.set))
            print(f"repeat {repeat + 1}, threads {threads}: {rates[threads][-1]:.0f} pairs/s", flush=True)
    print(f"\n{'threads':>8} {'median pairs/s':>15} {'range':>12}")
    for threads, values in rates.items():
        print(f"{threads:>8} {statistics.median(values):15.0f} {min(values):5.0f}-{max(values):<6.0f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"config": args.config, "steps": args.steps, "pairs_per_s": rates})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
