"""The one atomic writer, the one opener and strict JSON (spinn.io): a failure or a signal while writing
leaves the old file whole and no temporary file; a full disk is one line naming the file."""

import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spinn.checkpoint import CheckpointError, save_checkpoint
from spinn.errors import SpinnError
from spinn.io import WriteError, atomic_write, open_input, to_json, write_json

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def file_size_limit(n_bytes):
    """Files over `n_bytes` cannot be written in this process (EFBIG, as a full disk gives ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


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
        assert proc.wait(30) == status
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
