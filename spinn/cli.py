"""What every command-line entry point shares: error handling, warnings, the main-process guard."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from spinn.errors import SpinnError

#: Exit status for a user error (bad data, config, checkpoint or argument), as argparse uses.
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C, as a shell reports a process killed by SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM, as a shell reports a process killed by it.
EXIT_TERMINATED = 143
#: Exit status when stdout's reader closed the pipe, as a shell reports a process killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141


def run(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse `argv` and run `command`; a `SpinnError` prints one line and returns exit status 2.

    ``--debug`` (added here to every parser) lets the error propagate with its traceback.
    """
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of errors")
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    # A command's `set_threads` ends with it: commands also run inside other programs (and tests).
    threads = torch.get_num_threads()
    try:
        with terminate_as_exception():
            return command(args)
    except SpinnError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        if args.debug:
            raise
        print("terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader of the output went away (`... | head`): stop quietly, and keep Python's exit
        # flush from failing on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        torch.set_num_threads(threads)


def auto_threads() -> int:
    """torch's intra-op thread count (its default, which honours ``OMP_NUM_THREADS``, unless changed),
    capped by the CPUs this process may run on (its affinity: taskset, cpusets) shared evenly among the
    processes torchrun starts on this machine (``LOCAL_WORLD_SIZE``); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on macOS and Windows
        cpus = os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, min(torch.get_num_threads(), cpus // processes))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count for this process: `threads`, or `auto_threads` for None.

    Returns:
        The count set.

    Raises:
        SpinnError: `threads` below 1.
    """
    if threads is not None and threads < 1:
        raise SpinnError(f"threads: expected a count >= 1 (or auto), found {threads}")
    count = auto_threads() if threads is None else threads
    torch.set_num_threads(count)
    return count


def threads_argument(text: str) -> int | None:
    """argparse type of ``--threads``: a count >= 1, or ``auto`` (None)."""
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or auto, found {text!r}")
    return int(text)


#: The help of every entry point's ``--threads``.
THREADS_HELP = (
    "CPU threads for torch's operators: a count, or auto (default): torch's default capped by the CPUs "
    "this process may use, shared among torchrun's processes on the machine"
)


class Terminated(BaseException):  # noqa: N818 (named as KeyboardInterrupt is)
    """SIGTERM, raised where the process is, so that cleanups run (a half-written file is removed)."""


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in this process (processes forked from it keep the
    default: they die at once). Outside the main thread, where no handler can be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_main_process() -> bool:
    """True in a single process, and on rank 0 of a distributed run: the one that writes files and logs."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


#: The device names the entry points take (`train.device`, ``--device``).
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def is_device_name(name: str) -> bool:
    """Whether `name` is one of `DEVICE_NAMES`."""
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name) is not None


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; other names are taken as given.

    Raises:
        SpinnError: a name that is not one of `DEVICE_NAMES`, or a CUDA or MPS device that is not
            available.
    """
    if not is_device_name(name):
        raise SpinnError(f"device {name!r}: expected {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpinnError(f"device {name!r}: CUDA is not available here; use device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SpinnError(f"device {name!r}: MPS is not available here; use device auto or cpu")
    return device


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    # One line, no source location: these warnings are about the user's data and settings.
    print(f"warning: {message}", file=sys.stderr if file is None else file)
