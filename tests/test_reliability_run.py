"""Reliability of a run and its outputs (issue 18): nothing already written is lost or replaced by
something worse, and every failure is one line with exit status 2. docs/reliability.md lists each case
with its test."""

import fcntl
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from test_io import file_size_limit, leftovers
from tiny_runs import ROOT, sets, user_error

import spinn.train as train_module
from spinn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spinn.config import Config
from spinn.data.snli import read_nli, read_rows
from spinn.errors import SpinnError
from spinn.evaluate import main as evaluate_main
from spinn.io import MAX_LINE_BYTES
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
    assert not output.parent.exists()  # nor the folder made for it
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
    assert not root.exists()  # no partial file, nor the folder made for it


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


# --- non-finite weights -------------------------------------------------------------------------------


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


def _poisoned(trained, path, key="model"):
    ckpt = torch.load(trained / "last.pt", weights_only=True)
    name = next(name for name, w in ckpt[key].items() if w.is_floating_point())
    ckpt[key][name] = ckpt[key][name].clone()
    ckpt[key][name].view(-1)[:2] = float("nan")
    torch.save(ckpt, path)
    return name


def test_checkpoints_with_nan_weights_are_refused_everywhere_naming_the_tensor(trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    name = _poisoned(trained, bad)
    expected = f"{bad}: model tensor {name!r} (2 of "
    assert expected in user_error(evaluate_main, ["--checkpoint", str(bad), "--no-progress"], capsys)
    argv = ["--checkpoint", str(bad), "--premise", "A dog runs.", "--hypothesis", "A dog moves."]
    assert expected in user_error(predict_main, argv, capsys)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _poisoned(trained, run / "last.pt")
    assert "last.pt: model tensor" in user_error(train_main, ["--resume", str(run)], capsys)
    ckpt = torch.load(bad, weights_only=True)
    with pytest.raises(CheckpointError, match="refused to write the checkpoint: model tensor"):
        save_checkpoint(ckpt, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_a_crafted_checkpoint_is_refused_without_torchs_advice_to_load_it_anyway(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class WritesAFile:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('pwned')",)

    bad = tmp_path / "bad.pt"
    torch.save({**torch.load(trained / "best.pt", weights_only=True), "step": WritesAFile()}, bad)
    message = user_error(evaluate_main, ["--checkpoint", str(bad), "--no-progress"], capsys)
    assert (
        "refused to load: it holds objects other than tensors and plain containers (a reference to exec)"
        in message
    )
    assert "weights_only" not in message and "safe_globals" not in message and not marker.exists()


# --- reading ------------------------------------------------------------------------------------------

_READERS = """
import sys
from spinn.checkpoint import load_checkpoint
from spinn.config import load_config
from spinn.data.glove import load_glove
from spinn.data.snli import read_nli, read_rows
from spinn.data.vocab import Vocab
from spinn.data.snli import read_nli, read_rows
from spinn.errors import SpinnError
from spinn.train import main as train_main
import os
if os.geteuid() == 0:  # root reads a chmod 000 file: read as nobody (after the imports, which need root)
    os.setgid(65534)
    os.setuid(65534)
path = sys.argv[1]
for read in (
    lambda: read_nli(path, progress=False),
    lambda: list(read_rows(__import__("pathlib").Path(path))),
    lambda: load_glove(path, Vocab(["<pad>", "<unk>", "a"]), 2, progress=False, use_cache=False),
    lambda: load_config(path),
    lambda: Vocab.load(path),
    lambda: load_checkpoint(path),
):
    try:
        read()
    except SpinnError as err:
        print(err)
out = sys.argv[2]
status = train_main(["--config", sys.argv[3], "--set", f"data.train={path}", "--set", f"train.out_dir={out}"])
print(status)
"""


@pytest.mark.parametrize("kind", ["unreadable", "folder"])
def test_an_unreadable_file_or_a_folder_is_one_line_naming_it_at_every_read_site(kind):
    shared = Path(tempfile.mkdtemp())  # not under pytest's folders, which only their owner may enter
    shared.chmod(0o777)
    try:
        _read_as_nobody(shared, kind)
    finally:
        shutil.rmtree(shared)


def _read_as_nobody(shared, kind):
    path = shared / "train.jsonl"
    if kind == "folder":
        path.mkdir()
        expected = f"{path}: is a folder, expected a "
    else:
        path.write_text("{}\n")
        path.chmod(0)
        expected = f"{path}: permission denied, cannot read this "
    config = shared / "c.yaml"
    config.write_text("vocab:\n  glove: null\nmodel:\n  freeze_embeddings: false\n")
    config.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-c", _READERS, str(path), str(shared / "run"), str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(shared)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[-1] == "2", (proc.stdout, proc.stderr)
    assert all(line.startswith(expected) for line in lines[:5]), lines
    # A folder given as a checkpoint means its best.pt.
    assert lines[5].startswith(f"{path}/best.pt: no such" if kind == "folder" else expected), lines
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: data.train: {expected}"), proc.stderr
    assert not (shared / "run").exists()


def test_a_line_longer_than_the_cap_is_refused_before_it_is_read_whole(tmp_path):
    path = tmp_path / "pairs.jsonl"
    row = {"gold_label": "neutral", "sentence1_binary_parse": "( a b )", "sentence2_binary_parse": "( a b )"}
    long_row = {**row, "sentence1": "x" * MAX_LINE_BYTES}
    path.write_text(json.dumps(row) + "\n" + json.dumps(long_row) + "\n")
    expected = f"{path}:2: a line longer than {MAX_LINE_BYTES:,} bytes, expected one record per line"
    with pytest.raises(SpinnError, match=expected):
        read_nli(path, progress=False)
    with pytest.raises(SpinnError, match=expected):
        list(read_rows(path))


def test_a_parse_whose_words_differ_from_its_sentence_is_refused_or_counted(tmp_path, capsys):
    rows = [
        {"gold_label": "neutral", "sentence1": "A dog (brown) runs.", "sentence2": 'It\'s "fast".'},
        {"gold_label": "neutral", "sentence1": "A cat sleeps.", "sentence2": "It's fast."},
    ]
    rows[0]["sentence1_binary_parse"] = "( ( A ( dog ( -LRB- ( brown -RRB- ) ) ) ) ( runs . ) )"
    rows[0]["sentence2_binary_parse"] = "( It ( 's ( `` ( fast ( '' . ) ) ) ) )"
    rows[1]["sentence1_binary_parse"] = "( ( A dog ) ( sleeps . ) )"  # a shifted row: another sentence
    rows[1]["sentence2_binary_parse"] = "( It ( 's ( fast . ) ) )"
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpinnError, match=f"{path}:2: field 'sentence1_binary_parse': its words differ from"):
        read_nli(path, progress=False)
    data = read_nli(path, progress=False, check_text=False, lowercase=True)
    assert len(data.examples) == 2 and data.text_differs == 1
    assert "kept 1 pair(s) whose parse words differ from their sentence text" in capsys.readouterr().err
    assert len(read_nli(path, progress=False, skip_invalid=True).examples) == 1


def test_a_failed_download_or_evaluation_creates_no_folder(trained, tmp_path, capsys):
    from spinn.data.download import main as download_main

    root = tmp_path / "new" / "data"
    argv = ["snli", "--root", str(root), "--no-progress", "--base-url", "http://127.0.0.1:9"]
    assert "download failed" in user_error(download_main, argv, capsys)
    assert not (tmp_path / "new").exists()
    output = tmp_path / "out" / "sub" / "predictions.jsonl"
    with file_size_limit(100):
        assert evaluate_main(["--checkpoint", str(trained), "--no-progress", "--output", str(output)]) == 2
    capsys.readouterr()
    assert not (tmp_path / "out").exists()
