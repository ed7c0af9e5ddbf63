"""Reliability of a run and its outputs (issue 18): nothing already written is lost or replaced by
something worse, and every failure is one line with exit status 2. docs/reliability.md lists each case
with its test."""

import fcntl
import http.server
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_io import file_size_limit, leftovers
from tiny_runs import ROOT, sets, user_error

from spinn.checkpoint import load_checkpoint
from spinn.config import Config
from spinn.evaluate import main as evaluate_main
from spinn.predict import main as predict_main
from spinn.train import main as train_main


def test_predict_output_is_untouched_when_a_pair_fails_halfway(trained, tmp_path, capsys):
    pairs, output = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    good = json.dumps({"sentence1": "A man sleeps.", "sentence2": "A person rests."}) + "\n"
    bad = json.dumps({"sentence1": "A man sleeps.", "sentence2": "qwxz zzkq"}) + "\n"
    pairs.write_text(good * 300 + bad)
    output.write_text("the old predictions\n")
    argv = ["--checkpoint", str(trained), "--input", str(pairs), "--output", str(output)]
    assert "pair 301: hypothesis: none of its 2 words" in user_error(predict_main, argv, capsys)
    assert output.read_text() == "the old predictions\n" and leftovers(tmp_path) == []
    assert predict_main(argv[:-4] + ["--input", str(tmp_path / "ok.jsonl"), "--output", str(output)]) == 2
    capsys.readouterr()
    (tmp_path / "ok.jsonl").write_text(good * 3)
    assert predict_main(argv[:-4] + ["--input", str(tmp_path / "ok.jsonl"), "--output", str(output)]) == 0
    assert len(output.read_text().splitlines()) == 3


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


def test_evaluate_writes_its_outputs_whole(trained, tmp_path, capsys):
    output = tmp_path / "out" / "predictions.jsonl"
    argv = ["--checkpoint", str(trained), "--no-progress", "--output", str(output)]
    with file_size_limit(200):
        assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {output}: cannot write the predictions (File too large)"), err
    assert not output.exists() and leftovers(output.parent) == []
    assert evaluate_main(argv) == 0
    assert json.loads(output.with_suffix(".metrics.json").read_text())["pairs"] == 24


class _Stalls(http.server.BaseHTTPRequestHandler):
    """Sends 1 MB of a promised 10 MB archive, then waits."""

    def do_GET(self):  # noqa: N802 (the http.server name)
        self.send_response(200)
        self.send_header("Content-Length", str(10 << 20))
        self.end_headers()
        self.wfile.write(b"x" * (1 << 20))
        self.wfile.flush()
        time.sleep(30)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_download_leaves_no_partial_file(tmp_path, signum, status):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    root = tmp_path / "data"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "download.py"),
        "snli",
        "--root",
        str(root),
        "--no-progress",
    ]
    cmd += ["--base-url", f"http://127.0.0.1:{httpd.server_address[1]}"]
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in root.glob(".snli_1.0.zip.*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(30) == status
        assert "Traceback" not in proc.stderr.read()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list(root.iterdir()) == []


# --- config: NaN and infinities -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "override", "key", "found"),
    [
        ("optim:\n  lr: .nan\n", None, "optim.lr", "nan"),
        ("optim:\n  l2: .nan\n", None, "optim.l2", "nan"),
        ("optim:\n  lr_decay: .NaN\n", None, "optim.lr_decay", "nan"),
        ("", "optim.grad_clip=.inf", "optim.grad_clip", "inf"),
        ("", "model.dropout=.nan", "model.dropout", "nan"),
        ("", "optim.ema_decay=-.inf", "optim.ema_decay", "-inf"),
    ],
)
def test_nan_and_infinite_config_values_are_refused(tmp_path, capsys, yaml_text, override, key, found):
    (tmp_path / "c.yaml").write_text(yaml_text)
    out = tmp_path / "run"
    argv = ["--config", str(tmp_path / "c.yaml"), *sets(f"train.out_dir={out}")]
    argv += sets(override) if override else []
    message = user_error(train_main, argv, capsys)
    assert f"{key}: expected a finite number, found {found}" in message
    assert not out.exists()


def test_tensorboard_is_off_by_default_and_asking_for_it_without_the_package_is_refused(tmp_path, capsys):
    assert Config().train.tensorboard is False
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "run"
    argv = ["--config", str(ROOT / "configs" / "small.yaml"), *sets("train.tensorboard=true")]
    message = user_error(train_main, [*argv, *sets(f"train.out_dir={out}")], capsys)
    assert "train.tensorboard: true needs the tensorboard package" in message
    assert not out.exists()


# --- the run folder -----------------------------------------------------------------------------------


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
