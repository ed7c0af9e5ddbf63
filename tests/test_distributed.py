"""DistributedDataParallel on the CPU (gloo, 2 processes spawned here) against a single process."""

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from nli_rows import first_rows
from tiny_runs import ROOT, run_script, sets

from spinn import cli, distributed
from spinn.data.batching import BucketBatchSampler, NLIDataset, collate_nli
from spinn.data.snli import NLIExample
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.evaluate import classification_report, evaluate
from spinn.model.classifier import NLIClassifier
from spinn.train import main as train_main
from spinn.transitions import balanced, left_branching, right_branching

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 5
#: 48 training pairs: 12 full batches of 4 (no partial batch), 6 global steps per epoch.
N_TRAIN = 48
#: Not a multiple of WORLD, nor of the evaluation batch size.
N_EVAL = 23
EVAL_BATCH = 4


def _examples(n: int, seed: int) -> list[NLIExample]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    trees = (balanced, left_branching, right_branching)

    def sentence() -> tuple[list[str], list[int]]:
        k = rng.randint(1, 7)
        return rng.choices(words, k=k), [int(t) for t in rng.choice(trees)(k)]

    out = []
    for i in range(n):
        (p, pt), (h, ht) = sentence(), sentence()
        out.append(NLIExample(f"{seed}-{i}", p, pt, h, ht, rng.randrange(3)))
    return out


def _data() -> tuple[NLIDataset, NLIDataset, int]:
    """Train and dev datasets, and the vocabulary size."""
    train, dev = _examples(N_TRAIN, seed=1), _examples(N_EVAL, seed=2)
    vocab = Vocab.build(ex.premise + ex.hypothesis for ex in train + dev)
    return NLIDataset(train, vocab), NLIDataset(dev, vocab), len(vocab)


def _model(vocab_size: int) -> NLIClassifier:
    torch.manual_seed(0)
    # No dropout: each rank draws its own masks. SPINN-PI: its loss is a mean over pairs only, so the
    # mean of the two shards' means is the mean over the global batch.
    return NLIClassifier(
        vocab_size,
        d_embed=8,
        d_hidden=8,
        d_tracker=4,
        variant="spinn_pi",
        mlp_layers=1,
        mlp_dim=8,
        dropout=0.0,
        batch_norm=False,
        freeze_embeddings=False,
    )


def _optimizer(model: NLIClassifier) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _step(model: torch.nn.Module, loss_of: NLIClassifier, optimizer, batch) -> None:
    loss = loss_of.loss(model(batch), batch.labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _as_torchrun_rank(rank: int, port: int) -> None:
    """Give this spawned process the environment torchrun gives rank `rank`, and one thread."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: STEPS steps of DDP training, then a sharded evaluation; results to out_dir."""
    _as_torchrun_rank(rank, port)
    device = distributed.setup(torch.device("cpu"))
    try:
        train, dev, vocab_size = _data()
        model = _model(vocab_size)
        ddp = distributed.wrap(model, device)
        optimizer = _optimizer(model)
        sampler = distributed.train_sampler(train.lengths, GLOBAL_BATCH, seed=0)
        seen = []
        for _, indices in zip(range(STEPS), sampler, strict=False):
            seen.append(indices)
            _step(ddp, model, optimizer, collate_nli([train[i] for i in indices]))
        scored = []
        model.register_forward_hook(lambda module, args, out: scored.append(len(args[0])))
        result = evaluate(model, dev, batch_size=EVAL_BATCH, device=device, progress=False)
        torch.save(
            {
                "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "seen": seen,
                "scored": sum(scored),
                "steps_per_epoch": len(sampler),
                "probs": result.probs,
                "labels": result.labels,
                "loss": result.loss,
                "accuracy": result.accuracy,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
        distributed.barrier()  # leave together, as scripts/train.py does: gloo may abort a rank left alone
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict:
    """The same model trained in one process on the same global batches, and evaluated whole."""
    train, dev, vocab_size = _data()
    model = _model(vocab_size)
    optimizer = _optimizer(model)
    # The un-sharded order of batches of GLOBAL_BATCH / WORLD: global batch t is batches 2t and 2t + 1.
    local = list(BucketBatchSampler(train.lengths, GLOBAL_BATCH // WORLD, shuffle=True, seed=0))
    global_batches = [local[2 * t] + local[2 * t + 1] for t in range(STEPS)]
    for indices in global_batches:
        _step(model, model, optimizer, collate_nli([train[i] for i in indices]))
    result = evaluate(model, dev, batch_size=EVAL_BATCH, device=torch.device("cpu"), progress=False)
    return {
        "params": model.state_dict(),
        "initial": _model(vocab_size).state_dict(),
        "global_batches": global_batches,
        "result": result,
    }


@pytest.mark.slow
def test_ranks_take_disjoint_halves_of_the_global_batches(ranks, single):
    for t, indices in enumerate(single["global_batches"]):
        shares = [r["seen"][t] for r in ranks]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(indices)
    # The same number of optimiser steps per epoch as one process with the global batch.
    assert all(r["steps_per_epoch"] == N_TRAIN // GLOBAL_BATCH for r in ranks)


@pytest.mark.slow
def test_ddp_parameters_equal_single_process(ranks, single):
    for name, expected in single["params"].items():
        for r in ranks:
            torch.testing.assert_close(r["params"][name], expected, atol=1e-5, rtol=0, msg=name)
    # The run moved the weights: equal parameters are not just the shared initialisation.
    moved = max((ranks[0]["params"][k] - v).abs().max().item() for k, v in single["initial"].items())
    assert moved > 1e-2


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(ranks, single):
    expected = single["result"]
    # Each rank scored its own share; together every pair exactly once (23 pairs over 2 ranks).
    assert [r["scored"] for r in ranks] == [12, 11]
    for r in ranks:
        torch.testing.assert_close(r["probs"], expected.probs, atol=1e-6, rtol=0)
        assert torch.equal(r["labels"], expected.labels)
        assert r["loss"] == pytest.approx(expected.loss, abs=1e-6)
        assert r["accuracy"] == expected.accuracy
        predictions = r["probs"].argmax(dim=1)
        assert classification_report(r["labels"], predictions) == classification_report(
            expected.labels, expected.predictions
        )


def test_single_process_helpers_are_identities():
    assert not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank(), cli.is_main_process()) == (1, 0, True)
    t = torch.arange(5.0)
    assert distributed.sum_over_ranks(t)[0] is t
    assert distributed.shard(5).tolist() == [0, 1, 2, 3, 4]
    assert distributed.any_rank(True, torch.device("cpu")) is True
    assert distributed.local_batch_size(7) == 7


def test_resume_refuses_another_process_count():
    saved = BucketBatchSampler(torch.ones(10, dtype=torch.long), 2, num_replicas=2).state_dict()
    with pytest.raises(SpinnError, match="2 process\\(es\\) and this run has 1"):
        distributed.sampler_state(saved)


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = run_script(*args, env=_clean_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _clean_env() -> dict[str, str]:
    # One thread per process: two ranks on two cores; no torchrun variables leaking in from outside.
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_ENV}
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_torchrun_train_resume_then_single_process_evaluate(tmp_path):
    """torchrun with 2 CPU processes: 3 steps then resume to 5 equals 5 steps at once (dropout and
    batch norm on); then scripts/evaluate.py on the checkpoint in one process."""
    run = tmp_path / "run"
    overrides = [
        *first_rows(tmp_path, train=96, dev=41),
        "data.test=snli_1.0_dev.jsonl",  # a test split too: its evaluation is sharded over the ranks
        "model.d_hidden=16",
        "model.d_tracker=8",
        "model.mlp_dim=16",
        "train.batch_size=16",
        "train.eval_batch_size=8",
        "train.eval_every=2",
        "train.log_every=2",
        "train.progress=false",
        "train.tensorboard=false",
        "train.patience=null",
        "model.dropout=0.3",
    ]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "scripts/train.py"]
    common = sets(*overrides)
    whole = tmp_path / "whole"
    _run(
        *torchrun,
        "--config",
        "configs/small.yaml",
        *common,
        "--set",
        f"train.out_dir={whole}",
        "--max-steps",
        "5",
    )
    _run(
        *torchrun,
        "--config",
        "configs/small.yaml",
        *common,
        "--set",
        f"train.out_dir={run}",
        "--max-steps",
        "3",
    )
    first = torch.load(run / "last.pt", weights_only=True)
    assert first["step"] == 3 and first["sampler"]["num_replicas"] == 2
    out = _run(*torchrun, "--resume", str(run), "--max-steps", "5")
    assert out.stdout.count("resuming") == 1  # printed by rank 0 only
    # Each rank resumes its own batches and random state: the weights of the uninterrupted run.
    a, b = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (whole, run))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Only rank 0 writes the log, a line every 2 steps; the one at step 4 sums steps 3 and 4 over both
    # ranks across the resume, as in the uninterrupted run. Evaluations at 2, 3 (end of the first run),
    # 4, 5.
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lines = [(r["step"], r["loss"], r["acc"]) for r in records if r["split"] == "train"]
    whole_lines = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    assert lines == [(r["step"], r["loss"], r["acc"]) for r in whole_lines if r["split"] == "train"]
    assert [step for step, _, _ in lines] == [2, 4]
    dev = [r for r in records if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [2, 3, 4, 5]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["dev"]["pairs"] == 41 and not any(k.startswith("module.") for k in best["model"])
    # Both ranks scored the best checkpoint on test (the dev file again): the figures that chose it.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["pairs"] == 41
    assert summary["test"]["accuracy"] == best["dev"]["accuracy"]
    assert summary["test"]["loss"] == pytest.approx(best["dev"]["loss"], abs=1e-5)

    # The checkpoint of the 2-process run in one process: the same dev accuracy as the sharded evaluation.
    out = _run("scripts/evaluate.py", "--checkpoint", str(run / "best.pt"), "--split", "dev", "--no-progress")
    metrics = json.loads((run / "predictions_dev.metrics.json").read_text())
    assert metrics["pairs"] == 41
    assert metrics["accuracy"] == best["dev"]["accuracy"] == max(r["acc"] for r in dev)
    assert metrics["loss"] == pytest.approx(best["dev"]["loss"], abs=1e-5)


def _non_finite_worker(rank: int, port: int, argv: list[str], out_dir: str) -> None:
    """One rank of a 2-process run in which only rank 1's loss becomes infinite, at step 3."""
    _as_torchrun_rank(rank, port)
    real_loss = NLIClassifier.loss
    calls = []

    def loss(self, out, labels):
        calls.append(1)
        value = real_loss(self, out, labels)
        # Adding inf leaves every gradient finite: DDP's all-reduce does not carry the fault to rank 0.
        return value + float("inf") if rank == 1 and len(calls) == 3 else value

    NLIClassifier.loss = loss
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train_main(argv)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"code": code, "err": err.getvalue()}))


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    run = tmp_path / "run"
    overrides = [
        *first_rows(tmp_path, train=64, dev=16),
        "model.d_embed=50",
        "model.d_hidden=8",
        "model.d_tracker=4",
        "model.mlp_dim=8",
        "train.batch_size=8",
        "train.eval_every=2",
        "train.progress=false",
        "train.tensorboard=false",
        "train.max_steps=6",
        f"train.out_dir={run}",
    ]
    argv = ["--config", str(ROOT / "configs" / "small.yaml"), *sets(*overrides)]
    context = mp.spawn(_non_finite_worker, args=(_free_port(), argv, str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank still runs 2 minutes after another met a non-finite loss")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["code"] for r in ranks] == [2, 2], ranks
    assert "step 3 (epoch 0, batch 3 of 8): the training loss is inf" in ranks[1]["err"], ranks[1]["err"]
    assert "step 3 (epoch 0, batch 3 of 8): the training loss of another rank" in ranks[0]["err"], ranks[0][
        "err"
    ]
    # Nobody took step 3: the checkpoint on disk is step 2's.
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
