"""The SNLI and GloVe sample shipped inside the package, and configs/small.yaml reading it."""

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import ROOT, run_script, sets

from spinn.config import load_config
from spinn.data import sample
from spinn.data.glove import load_glove
from spinn.data.snli import read_nli
from spinn.data.vocab import Vocab

#: The most the sample may weigh, every file of its folder together.
MAX_BYTES = 4 * 1024 * 1024


def test_the_sample_stays_under_4_mb_and_carries_its_licences():
    files = [p for p in sample.SAMPLE_DIR.iterdir() if p.is_file()]
    assert {sample.TRAIN, sample.DEV, sample.GLOVE, "README.md"} <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) < MAX_BYTES
    readme = (sample.SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    for words in ("CC BY-SA 4.0", "Bowman", "ODC PDDL 1.0", "Pennington"):
        assert words in readme


def test_the_sample_reads_as_snli_with_glove_rows_for_its_words():
    train = read_nli(sample.SAMPLE_DIR / sample.TRAIN, lowercase=True, progress=False)
    dev = read_nli(sample.SAMPLE_DIR / sample.DEV, lowercase=True, progress=False)
    assert (len(train.examples), train.no_gold, len(dev.examples), dev.no_gold) == (5498, 4, 1964, 36)
    words = {w for ex in train.examples + dev.examples for w in ex.premise + ex.hypothesis}
    vocab = Vocab.from_counts(dict.fromkeys(words, 1))
    glove = load_glove(sample.SAMPLE_DIR / sample.GLOVE, vocab, 50, progress=False, use_cache=False)
    # Every GloVe row is a word of the pairs (nothing else shipped); most words have one.
    with gzip.open(sample.SAMPLE_DIR / sample.GLOVE) as f:
        rows = sum(1 for _ in f)
    assert glove.found == rows and glove.found > 0.95 * len(words)


def test_small_yaml_names_the_sample_from_any_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "small.yaml")
    assert cfg.data.data_dir == sample.SAMPLE and cfg.data.root() == sample.SAMPLE_DIR
    for name in (cfg.data.train, cfg.data.dev, cfg.vocab.glove):
        path = cfg.data.path(name)
        assert path.is_file() and path.parent == sample.SAMPLE_DIR
    assert cfg.data.test is None
    # A folder of the same name in the working folder is not the sample: the name has a colon.
    cfg = load_config(ROOT / "configs" / "small.yaml", ["data.data_dir=sample"])
    assert cfg.data.path(cfg.data.train) == Path("sample") / cfg.data.train


@pytest.mark.slow
def test_training_on_the_sample_from_elsewhere_writes_nothing_into_the_package(tmp_path):
    """The small config for two tiny steps, from an empty folder, with no ../shared in reach."""
    # The spinn a command started from another folder imports (the installed one, where installed).
    where = ["-c", "from spinn.data import sample; print(sample.SAMPLE_DIR)"]
    shipped = Path(run_script(*where, cwd=tmp_path, check=True).stdout.strip())
    before = sorted(p.name for p in shipped.iterdir())
    overrides = [
        "model.d_hidden=8",
        "model.d_tracker=4",
        "model.mlp_dim=8",
        "train.batch_size=16",
        "train.eval_every=2",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    script, config = ROOT / "scripts" / "train.py", ROOT / "configs" / "small.yaml"
    proc = run_script(
        str(script), "--config", str(config), *sets(*overrides), "--max-steps", "2", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert f"train: 5,498 pairs from {shipped / sample.TRAIN}" in proc.stdout
    assert "done (max_steps) after 2 steps" in proc.stdout
    assert (tmp_path / "runs" / "small" / "best.pt").is_file()
    assert sorted(p.name for p in shipped.iterdir()) == before


@pytest.mark.slow
def test_the_cutting_script_rebuilds_the_sample_byte_for_byte(data_dir, tmp_path):
    proc = run_script("scripts/make_sample.py", "--source", str(data_dir), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for name in (sample.TRAIN, sample.DEV, sample.GLOVE):
        assert (tmp_path / name).read_bytes() == (sample.SAMPLE_DIR / name).read_bytes(), name


@pytest.mark.parametrize("name", [sample.TRAIN, sample.DEV])
def test_the_sample_rows_are_the_official_rows_less_the_full_parses(data_dir, name):
    source = "snli_1.0_train_0.01.jsonl" if name == sample.TRAIN else "snli_1.0_dev.jsonl"
    with open(data_dir / "snli_1.0" / source, encoding="utf-8") as f:
        official = [json.loads(line) for line in f]
    with gzip.open(sample.SAMPLE_DIR / name, "rt", encoding="utf-8") as f:
        shipped = [json.loads(line) for line in f]
    dropped = ("sentence1_parse", "sentence2_parse")
    assert shipped == [{k: v for k, v in row.items() if k not in dropped} for row in official[: len(shipped)]]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="a wheel build needs setuptools")
def test_small_yaml_trains_from_an_installed_wheel_in_an_empty_folder(tmp_path):
    """The wheel carries the sample: installed (not editable), `spinn train --config small` trains in an
    empty folder with nothing else."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "spinn", source / "spinn", ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    work = tmp_path / "empty"
    work.mkdir()
    overrides = ["model.d_hidden=8", "model.d_tracker=4", "model.mlp_dim=8", "train.batch_size=16"]
    overrides += ["train.progress=false", "train.tensorboard=false"]
    argv = ["-m", "spinn", "train", "--config", "small", "--max-steps", "2", *sets(*overrides)]
    proc = run_script(*argv, cwd=work, env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    assert f"train: 5,498 pairs from {site / 'spinn' / 'data' / 'sample' / sample.TRAIN}" in proc.stdout
    assert "done (max_steps) after 2 steps" in proc.stdout
