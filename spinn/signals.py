"""Ctrl-C and SIGTERM during training: stop after the current step (and save), or at once when
they come twice."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint and stops after the current step."""

    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    stop = StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        stop.signum = signum
        tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step (again to abort now)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
