"""The run folder belongs to one training process: a file in its place, an input error, a folder that
already holds a run, a second writer, a resumed run whose vocabulary or clock disagrees, a full disk on
resume. Nothing already written is lost."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from tiny_runs import ROOT, file_size_limit, leftovers, sets, user_error

from spinn.checkpoint import load_checkpoint
from spinn.train import main as train_main


def test_an_out_dir_that_is_a_file_or_lies_under_one_is_one_line(tiny_data, tmp_path, capsys):
    (tmp_path / "f").write_text("not a folder")
    for out, expected in (
        (tmp_path / "f", "is a file"),
        (tmp_path / "f" / "run", f"lies under a file, {tmp_path}/f"),
    ):
        message = user_error(train_main, [*tiny_data, *sets(f"train.out_dir={out}")], capsys)
        assert f"train.out_dir: {out} {expected}; expected a folder" in message
    assert (tmp_path / "f").read_text() == "not a folder"


@pytest.mark.parametrize("bad", ["data.train=missing.jsonl", "vocab.glove=missing.txt", "data.dev=."])
def test_an_input_error_creates_no_run_folder(tiny_data, tmp_path, capsys, bad):
    out = tmp_path / "runs" / "new"
    user_error(train_main, [*tiny_data, *sets(f"train.out_dir={out}", bad)], capsys)
    assert not (tmp_path / "runs").exists()


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(
    trained, tiny_data, tmp_path, capsys
):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("best.pt", "summary.json", "log.jsonl"):  # a finished run without last.pt
        (old / name).write_bytes(
            (trained / name if name != "summary.json" else trained / "config.yaml").read_bytes()
        )
    argv = [*tiny_data, *sets(f"train.out_dir={old}", "train.max_steps=2")]
    message = user_error(train_main, argv, capsys)
    assert (
        f"{old}: already holds a run (log.jsonl, best.pt, summary.json); continue it with --resume" in message
    )
    assert (old / "summary.json").read_bytes() == (trained / "config.yaml").read_bytes()
    assert "cannot be combined with --resume" in user_error(
        train_main, [*argv, "--overwrite", "--resume", str(old)], capsys
    )
    assert train_main([*argv, "--overwrite"]) == 0
    assert json.loads((old / "summary.json").read_text())["steps"] == 2
    assert "tensorboard" not in capsys.readouterr().out  # off by default: no word about it


def _lock_held_by_this_process(folder):
    folder.mkdir(exist_ok=True)
    lock = open(folder / ".lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.truncate(0)
    lock.write("12345\n")
    lock.flush()
    return lock


def test_a_second_writer_of_a_run_folder_is_refused(trained, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    lock = _lock_held_by_this_process(run)
    try:
        argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=2")]
        message = user_error(train_main, argv, capsys)
        assert f"{run}: another training process (pid 12345) is writing this run folder" in message
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        lock.close()  # as the kernel does when a process dies
    assert train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=2")]) == 0
    lock = _lock_held_by_this_process(run)
    try:
        message = user_error(train_main, ["--resume", str(run), *sets("train.max_steps=3")], capsys)
        assert "another training process (pid 12345)" in message
    finally:
        lock.close()


def test_a_resumed_vocabulary_in_another_order_is_refused(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["itos"][2], vocab["itos"][3] = vocab["itos"][3], vocab["itos"][2]  # same size, another order
    (run / "vocab.json").write_text(json.dumps(vocab))
    message = user_error(train_main, ["--resume", str(run), *sets("train.max_steps=3")], capsys)
    assert f"{run}/vocab.json: not the vocabulary of the checkpoint to resume from" in message


def test_train_seconds_of_a_run_resumed_after_its_last_step_are_the_runs(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    first = json.loads((run / "summary.json").read_text())["train_seconds"]
    assert first > 0
    assert train_main(["--resume", str(run), *sets("train.progress=false")]) == 0  # no step left
    assert "no training left" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["train_seconds"] == first


@pytest.mark.slow
def test_a_full_disk_on_resume_is_one_line_and_keeps_the_checkpoints(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=2")]) == 0
    capsys.readouterr()
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    with file_size_limit(20_000):  # the log and config fit, no checkpoint does
        status = train_main(["--resume", str(run), *sets("train.max_steps=4", "train.progress=false")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run}/"), err
    assert ".pt: cannot write the checkpoint (File too large)" in err[0], err
    assert {name: (run / name).read_bytes() for name in before} == before and leftovers(run) == []
    assert load_checkpoint(run / "last.pt")["step"] == 2


@pytest.mark.slow
def test_two_trainings_into_one_folder_the_second_is_refused_and_a_killed_one_resumes(
    tiny_data, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=100000", "train.eval_every=100000")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *argv], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run / ".lock").read_text().strip() == str(first.pid)
        assert "already holds a run" in user_error(train_main, argv, capsys)
        # Started together, both would pass that check: the lock stops the second, which deletes nothing.
        for second in ([*argv, "--overwrite"], ["--resume", str(run)]):
            message = user_error(train_main, second, capsys)
            assert f"another training process (pid {first.pid}) is writing this run folder" in message
        assert (run / "last.pt").exists()
    finally:
        first.kill()  # SIGKILL: no cleanup, the kernel drops the lock
        first.wait(30)
    assert train_main(["--resume", str(run), *sets("train.max_steps=2")]) == 0
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]  # one run's lines, in order
