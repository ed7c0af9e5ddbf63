import os
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA_DIR = Path(
    os.environ.get("SPINN_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sample (SNLI 1% train, SNLI dev, GloVe rows, SICK); skip where it is absent."""
    if not (DATA_DIR / "snli_1.0" / "snli_1.0_dev.jsonl").exists():
        pytest.skip(f"real data not found at {DATA_DIR} (set SPINN_TEST_DATA)")
    return DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def cache_dir(tmp_path_factory) -> Iterator[Path]:
    """Data caches of a test run go to a folder of its own (subprocesses inherit it), never the user's."""
    folder = tmp_path_factory.mktemp("spinn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPINN_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """train.py arguments for 48 training and 24 dev rows of the sample inside the package and its
    GloVe rows (cached once per test module), with a tiny model (tests/tiny_runs.py)."""
    from tiny_runs import tiny_data_args

    return tiny_data_args(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A run folder of two steps: best.pt, last.pt, config.yaml, vocab.json."""
    from tiny_runs import sets

    from spinn.train import main as train_main

    run = tmp_path_factory.mktemp("run") / "run"
    assert train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=2")]) == 0
    return run
