"""Reliability of a run and its outputs (issue 18): nothing already written is lost or replaced by
something worse, and every failure is one line with exit status 2. docs/reliability.md lists each case
with its test."""

import http.server
import importlib.util
import json
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
