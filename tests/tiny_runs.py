"""The tiny training setup the reliability tests share: 48 training and 24 dev rows of the sample
inside the package, its GloVe rows, a model of a few thousand weights (the fixtures are in
conftest.py)."""

import gzip
from pathlib import Path

import pytest

from spinn.data.sample import DEV, GLOVE, SAMPLE_DIR, TRAIN
from spinn.errors import SpinnError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.d_embed=50",
    "model.d_hidden=8",
    "model.d_tracker=4",
    "model.mlp_dim=8",
    "train.batch_size=8",
    "train.eval_batch_size=64",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
]


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


def tiny_data_args(root):
    """Write the tiny train and dev files under `root`; the train.py arguments that read them."""
    for name, source, rows in (("train.jsonl", TRAIN, 48), ("dev.jsonl", DEV, 24)):
        with gzip.open(SAMPLE_DIR / source, "rt", encoding="utf-8") as f:
            (root / name).write_text("".join(next(f) for _ in range(rows)), encoding="utf-8")
    return [
        "--config",
        str(ROOT / "configs" / "small.yaml"),
        *sets(
            *TINY,
            f"data.data_dir={root}",
            "data.train=train.jsonl",
            "data.dev=dev.jsonl",
            f"data.cache_dir={root / 'cache'}",
            f"vocab.glove={SAMPLE_DIR / GLOVE}",
        ),
    ]


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
