"""Helpers the tests share (the fixtures are in conftest.py): the tiny training setup (48 training and
24 dev rows of the sample inside the package, its GloVe rows, a model of a few thousand weights), a
user-error check for the entry points, a file size limit, and a pickle that runs code."""

import contextlib
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nli_rows import first_rows

from spinn.errors import SpinnError
from spinn.model import NLIClassifier

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(size: int, *more: str) -> list[str]:
    """Overrides for a model of hidden size `size` (MLP `size`, Tracker `size // 2`) trained on batches
    of `size` pairs, with no progress bar or TensorBoard; then `more`, which win over these."""
    return [
        f"model.d_hidden={size}",
        f"model.d_tracker={size // 2}",
        f"model.mlp_dim={size}",
        f"train.batch_size={size}",
        "train.eval_batch_size=64",
        "train.progress=false",
        "train.tensorboard=false",
        *more,
    ]


TINY = tiny_model(8, "model.d_embed=50", "train.log_every=1")


def tiny_classifier(vocab_size: int, variant: str, **sizes) -> NLIClassifier:
    """An NLIClassifier of a few thousand weights, seeded; `sizes` replace the default sizes."""
    torch.manual_seed(0)
    args = dict(d_embed=16, d_hidden=16, d_tracker=8, variant=variant, mlp_layers=1, mlp_dim=32)
    return NLIClassifier(vocab_size, **(args | sizes))


def run_script(
    *args: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`python ARGS...` in a process of its own, as a user runs it (from the repository root unless `cwd`
    says otherwise), its output captured as text; `env` is its whole environment (default: this one)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


def tiny_data_args(root):
    """Write the tiny train and dev files under `root`; the train.py arguments that read them."""
    config = str(ROOT / "configs" / "small.yaml")
    return ["--config", config, *sets(*TINY, *first_rows(root, train=48, dev=24))]


def user_error(main, argv, capsys):
    """Run an entry point that must fail with a user error: exit status 2 and one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    with pytest.raises(SpinnError):  # --debug lets the same error through with its traceback
        main([*argv, "--debug"])
    capsys.readouterr()
    return err[0]


class WritesAFile:
    """Unpickling this runs ``exec``, which writes the file named in `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


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
