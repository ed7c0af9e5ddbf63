"""The run folder: what a run writes there, the check that a new run does not overwrite an old one,
and the advisory lock one training process holds on it while it writes there."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from spinn import cli
from spinn.errors import SpinnError
from spinn.io import remove_stale_temporaries, strerror

#: What a run writes into its folder: a folder that holds any of these holds a run.
RUN_FILES = (
    "config.yaml",
    "vocab.json",
    "log.jsonl",
    "last.pt",
    "best.pt",
    "summary.json",
    "learning_curve.png",
    "tb",
)
#: The file a training process holds an advisory lock on while it owns its run folder.
LOCK_FILE = ".lock"


def check_run_dir(out: Path, resuming: bool, overwrite: bool) -> None:
    """The run folder, checked before anything is read or created: a folder or a path that can become
    one, and no run in it unless this is a resume or `overwrite` is given.

    Raises:
        SpinnError: train.out_dir is a file or lies under one, or it holds a run and this is neither a
            resume nor an overwrite.
    """
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"lies under a file, {existing}"
        raise SpinnError(f"train.out_dir: {out} {where}; expected a folder")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (resuming or overwrite):
        raise SpinnError(
            f"{out}: already holds a run ({', '.join(found)}); continue it with --resume {out}, replace it "
            f"with --overwrite, or start a new one elsewhere with --set train.out_dir=OTHER_DIR"
        )


@contextlib.contextmanager
def own_run_dir(out: Path, resuming: bool, overwrite: bool) -> Iterator[None]:
    """Create the run folder and hold an advisory lock on it while the block runs: one process writes a
    run folder at a time. The kernel releases the lock when the process dies, so a killed run resumes.
    With `overwrite`, the old run's files are deleted once the lock is held.

    Raises:
        SpinnError: the folder cannot be created, or another process holds its lock.
    """
    if not cli.is_main_process():  # the other ranks of a distributed run write nothing there
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK_FILE, "a+", encoding="utf-8")  # held open while the block runs
    except OSError as err:
        raise SpinnError(f"{out}: cannot create the run folder ({strerror(err)})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise SpinnError(
                f"{out}: another training process (pid {holder}) is writing this run folder; wait for it "
                f"to end, or use another train.out_dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        check_run_dir(out, resuming, overwrite)  # again: a run may have ended here since the first check
        if overwrite:
            remove_run_files(out)
        remove_stale_temporaries(out)
        yield


def remove_run_files(out: Path) -> None:
    """Delete the files of the run in `out` (--overwrite)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
