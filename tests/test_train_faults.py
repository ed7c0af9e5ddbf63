"""Training under faults: settings refused before anything runs, SIGTERM, Ctrl-C and SIGKILL during
real runs, a non-finite loss or gradient, a full disk. Each stops with one line and keeps the last
good checkpoints, and --resume continues."""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import ROOT, run_script, sets, user_error

import spinn.train as train_module
from spinn.checkpoint import load_checkpoint
from spinn.evaluate import main as evaluate_main
from spinn.model.classifier import NLIClassifier
from spinn.train import main as train_main


def test_batch_norm_with_one_pair_per_process_is_refused_before_anything_runs(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "model.batch_norm=true", "train.batch_size=1")]
    assert user_error(train_main, argv, capsys) == (
        "error: train.batch_size 1 gives 1 pair per process and batch norm (model.batch_norm) cannot "
        "train on one: use at least 2"
    )
    assert not run.exists()


@pytest.mark.slow
def test_compile_without_a_cpp_compiler_is_refused_before_anything_runs(tiny_data, tmp_path):
    """torch.compile on the CPU where inductor finds no C++ compiler: $CXX, which inductor reads when
    the process starts, names a missing one."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDUCTOR_INSTALL_GXX"}  # no conda g++ either
    env |= {"PYTHONPATH": str(ROOT), "CXX": str(tmp_path / "no-g++")}
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.compile=true")]
    proc = run_script("scripts/train.py", *argv, env=env)
    assert proc.returncode == 2 and proc.stderr == (
        "error: train.compile: torch.compile on the CPU needs a C++ compiler, and none was found (g++, "
        "or the one $CXX names): install one, or set train.compile=false\n"
    ), proc.stderr
    assert not run.exists()


def _wait_for_step(run, above, proc, timeout=120):
    """Wait until log.jsonl shows a training step above `above` (or the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = (run / "log.jsonl").read_text().splitlines()
            steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
        except (OSError, json.JSONDecodeError):
            steps = []
        if steps and max(steps) > above:
            return max(steps)
        time.sleep(0.005)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("loader_workers", [0, 1])
def test_killed_and_interrupted_runs_resume_to_the_same_final_weights(tiny_data, tmp_path, loader_workers):
    """SIGTERM, Ctrl-C and SIGKILL at random moments of a real run, sent to its whole process group as a
    terminal or a job scheduler does (loader workers included); each time --resume continues, and the
    run ends with exactly the weights of an uninterrupted one."""
    common = sets(
        "train.max_steps=16",
        "train.epochs=null",
        "train.patience=null",
        "train.eval_every=3",
        "model.dropout=0.3",
        f"train.loader_workers={loader_workers}",
    )
    whole, part = tmp_path / "whole", tmp_path / "part"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The uninterrupted run in a process of its own too: this one's settings (threads) may differ.
    run_script("scripts/train.py", *tiny_data, *common, *sets(f"train.out_dir={whole}"), env=env, check=True)

    rng = random.Random(7)
    argv = [sys.executable, "scripts/train.py", *tiny_data, *common, *sets(f"train.out_dir={part}")]
    step = 0
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGKILL):
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        seen = _wait_for_step(part, step, proc)
        time.sleep(rng.uniform(0, 0.03))
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break  # it finished before the signal
        assert seen is not None, err
        if sig != signal.SIGKILL:
            assert proc.returncode == 128 + sig and f"{sig.name} at step" in err, err
        assert "Traceback" not in err
        step = load_checkpoint(part / "last.pt")["step"]
        argv = [sys.executable, "scripts/train.py", "--resume", str(part)]
    if proc.returncode != 0:
        proc = run_script(*argv[1:], env=env)
        assert proc.returncode == 0, proc.stderr

    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 16
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [
        r["loss"]
        for r in map(json.loads, (whole / "log.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ] == [
        r["loss"]
        for r in map(json.loads, (part / "log.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert not [p.name for p in part.iterdir() if p.name.endswith(".tmp")]


def _record_saves(monkeypatch):
    saves = []
    real = train_module.save_checkpoint

    def recording(state, path):
        real(state, path)
        saves.append((Path(path).name, state["step"]))

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    return saves


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_naming_step_and_batch_and_keeps_the_checkpoints(
    tiny_data, tmp_path, capsys, monkeypatch, bad
):
    real_loss = NLIClassifier.loss
    calls = []

    def loss(self, out, labels):
        calls.append(1)
        value = real_loss(self, out, labels)
        return value * bad if len(calls) == 8 else value

    monkeypatch.setattr(NLIClassifier, "loss", loss)
    saves = _record_saves(monkeypatch)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert f"step 8 (epoch 1, batch 2 of 6): the training loss is {bad}" in err, err
    assert saves[-1] == ("last.pt", 6) and all(step <= 6 for _, step in saves)
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert load_checkpoint(run / "best.pt")["step"] in (3, 6)
    assert max(json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()) == 7


def test_a_non_finite_gradient_under_a_finite_loss_stops_before_the_step(
    tiny_data, tmp_path, capsys, monkeypatch
):
    real_loss = NLIClassifier.loss
    calls = []

    def loss(self, out, labels):
        calls.append(1)
        value = real_loss(self, out, labels)
        if len(calls) == 5:
            # sqrt'(0) is inf: the loss stays finite, every gradient becomes NaN.
            value = value + 0 * torch.sqrt(out.logits.sum() * 0)
        return value

    monkeypatch.setattr(NLIClassifier, "loss", loss)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "step 5 (epoch 0, batch 5 of 6): the training gradient norm is nan" in err, err
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 3
    assert all(torch.isfinite(w).all() for w in last["model"].values() if w.is_floating_point())


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(
    tiny_data, tmp_path, capsys, monkeypatch
):
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        if any(name in str(getattr(f, "name", "")) for name in ("last.pt", "best.pt")):
            calls.append(1)
        # Checkpoints: last.pt at step 0, best.pt and last.pt at step 3, the first of step 6 fails.
        if len(calls) == 4:
            f.write(b"partial data")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and ".pt: cannot write" in err[0], err
    assert load_checkpoint(run / "last.pt")["step"] == 3 and load_checkpoint(run / "best.pt")["step"] == 3
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_the_log_is_a_clear_error_and_resume_works(
    tiny_data, tmp_path, capsys, monkeypatch
):
    appends = []

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if str(path).endswith("log.jsonl") and mode.startswith("a"):
            appends.append(1)
            if len(appends) == 5:  # train step 4: half a line reaches the disk, then it is full
                f.write('{"step": 4, "spl')
                f.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr(train_module, "open", full_disk_open, raising=False)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=8", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and f"{run / 'log.jsonl'}: cannot write the log (No space left on device)" in err[0]
    ), err
    assert load_checkpoint(run / "last.pt")["step"] == 3
    monkeypatch.undo()
    assert train_main(["--resume", str(run), "--set", "train.progress=false"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 8]


@pytest.mark.slow
def test_a_step_that_spoils_the_batch_norm_statistics_stops_before_any_checkpoint(
    tiny_data, tmp_path, capsys
):
    """SGD at lr 1e6 without clipping: batch-norm's running_var becomes infinite after a step whose loss
    and gradients were finite (the checks before the step pass)."""
    run = tmp_path / "run"
    diverging = ("optim.name=sgd", "optim.lr=1e6", "optim.grad_clip=null", "model.batch_norm=true")
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=2", *diverging)]
    message = user_error(train_main, argv, capsys)
    found = re.search(
        r"step (\d+): after the optimiser step, tensor 'mlp\.\d+\.running_var' \(\d+ of", message
    )
    assert found, message
    assert f"is NaN or infinite; stopped without saving, so {run} keeps its last good checkpoints" in message
    stopped = int(found.group(1))
    last = load_checkpoint(run / "last.pt")  # load_checkpoint checks that every tensor is finite
    assert stopped > 2 and last["step"] == 2 * ((stopped - 1) // 2)
    assert load_checkpoint(run / "best.pt")["step"] <= last["step"]
    assert evaluate_main(["--checkpoint", str(run), "--no-progress"]) == 0


def test_a_non_finite_dev_loss_never_becomes_a_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    real = train_module.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            result.loss = float("nan")
            result.probs[:] = 0.0
            result.probs[:, 0] = 1.0  # and an accuracy that would be a new best
        return result

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=2")]
    message = user_error(train_main, argv, capsys)
    assert (
        f"step 4: the dev loss is nan, expected a finite number; stopped without saving, so {run}" in message
    )
    assert load_checkpoint(run / "best.pt")["step"] == 2 and load_checkpoint(run / "last.pt")["step"] == 2
