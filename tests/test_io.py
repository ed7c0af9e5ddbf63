"""The one atomic writer, the one opener and strict JSON (spinn.io): a failure or a signal while writing
leaves the old file whole and no temporary file; a full disk is one line naming the file."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from tiny_runs import ROOT, file_size_limit, leftovers, run_script, user_error

from spinn.checkpoint import CheckpointError, save_checkpoint
from spinn.data.snli import read_nli, read_rows
from spinn.errors import SpinnError
from spinn.evaluate import main as evaluate_main
from spinn.io import MAX_LINE_BYTES, WriteError, atomic_write, open_input, to_json, write_json


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(SpinnError, match="bad pair"), atomic_write(path) as f:
        f.write("new, half written\n")
        raise SpinnError("bad pair")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []
    with atomic_write(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []


def test_a_full_disk_in_torch_save_is_one_line_naming_the_file_and_the_old_checkpoint_stays(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 1}, path)
    old = path.read_bytes()
    big = {"model": {"w": torch.zeros(200_000)}, "step": 2}
    with file_size_limit(50_000), pytest.raises(CheckpointError) as err:
        save_checkpoint(big, path)  # torch.save turns the OSError into a RuntimeError of its own
    message = str(err.value)
    assert message.startswith(f"{path}: cannot write the checkpoint (File too large)"), message
    assert "\n" not in message and "enforce fail" not in message
    assert path.read_bytes() == old and leftovers(tmp_path) == []


def test_a_full_disk_in_a_text_write_and_a_path_through_a_file_are_write_errors(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.5})
    expected = r"metrics.json: cannot write the metrics \(File too large\)"
    with file_size_limit(1_000), pytest.raises(WriteError, match=expected):
        write_json(path, {"accuracy": [0.5] * 1000}, what="the metrics")
    assert path.read_text() == '{\n  "accuracy": 0.5\n}\n' and leftovers(tmp_path) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(WriteError, match="a_file/sub/out.json: cannot write"):
        write_json(tmp_path / "a_file" / "sub" / "out.json", {})


def test_errors_of_the_block_that_are_not_the_files_propagate_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"), atomic_write(tmp_path / "x.pt", binary=True):
        raise RuntimeError("a bug")
    with pytest.raises(WriteError, match=r"x.pt: cannot write the file \(No space left on device\)"):
        with atomic_write(tmp_path / "x.pt", binary=True):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_while_writing_removes_the_temporary_file_and_exits_143(tmp_path):
    """A writer stopped by SIGTERM (as a download is) leaves the old file and no temporary one."""
    target = tmp_path / "data.zip"
    target.write_bytes(b"old")
    script = (
        "import sys, time\n"
        "from spinn import cli\n"
        "from spinn.io import atomic_write\n"
        "def slow(args):\n"
        f"    with atomic_write({str(target)!r}, binary=True) as f:\n"
        "        f.write(b'partial'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "    return 0\n"
        "sys.exit(cli.run(cli.argparse.ArgumentParser(), slow, []))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout.readline() == "writing\n"
        assert leftovers(tmp_path)  # the temporary file exists while writing
        proc.send_signal(signum)
        assert proc.wait(120) == status  # a niced test on busy cores can take long to stop Python
        assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_json_output_is_strict():
    assert to_json({"p": 0.5}, what="x") == '{"p": 0.5}'
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(SpinnError, match=r"predictions.jsonl: pair 3: holds a number that is not finite"):
            to_json({"probabilities": {"neutral": bad}}, what="predictions.jsonl: pair 3")


def test_reading_a_folder_a_missing_or_an_unreadable_file_names_the_path(tmp_path):
    with pytest.raises(SpinnError, match=f"{tmp_path}: is a folder, expected a data file"):
        open_input(tmp_path, "data file")
    with pytest.raises(SpinnError, match="none.jsonl: no such data file"):
        open_input(tmp_path / "none.jsonl", "data file")


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


@pytest.mark.slow
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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(shared)}
    proc = run_script("-c", _READERS, str(path), str(shared / "run"), str(config), env=env)
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
