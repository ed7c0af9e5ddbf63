import json
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from tiny_runs import WritesAFile, user_error

from spinn.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from spinn.evaluate import main as evaluate_main
from spinn.predict import main as predict_main
from spinn.train import main as train_main


def _state():
    return {
        "config": {"model": {"d_hidden": 8}},
        "vocab": {"itos": ["<pad>", "<unk>", "dog"]},
        "model": {"w": torch.randn(3, 4), "b": torch.zeros(4)},
        "step": 7,
        "best_dev_acc": None,
        "rng": rng_state(),
    }


def test_round_trip_with_weights_only(tmp_path):
    state = _state()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(state, path)
    assert os.listdir(path.parent) == ["last.pt"], "the temporary file is renamed, not left behind"
    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["format_version"] == FORMAT_VERSION and isinstance(raw["torch_version"], str)
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], state["model"]["w"])
    assert ckpt["vocab"] == state["vocab"] and ckpt["step"] == 7


def test_a_run_folder_means_its_best_checkpoint(tmp_path):
    save_checkpoint(_state(), tmp_path / "best.pt")
    assert load_checkpoint(tmp_path)["step"] == 7


def test_rng_states_restore_every_generator(tmp_path):
    save_checkpoint(_state(), tmp_path / "c.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({**_state(), "payload": WritesAFile(target)}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not target.exists()


def test_truncated_missing_foreign_and_other_version_files(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(_state(), path)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing key"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint({**_state(), "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")


def _damage(kind, good, path, marker):
    """Write a damaged copy of checkpoint `good` to `path`."""
    data = good.read_bytes()
    ckpt = torch.load(good, weights_only=True)
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(bytes(b ^ 0x5A for b in data))
    elif kind == "version":
        torch.save({**ckpt, "format_version": 99}, path)
    elif kind == "crafted":
        torch.save({**ckpt, "step": WritesAFile(marker)}, path)
    elif kind == "vocab":
        torch.save({**ckpt, "vocab": {"itos": ckpt["vocab"]["itos"][:-3]}}, path)
    elif kind == "config":
        config = json.loads(json.dumps(ckpt["config"]))
        config["model"]["d_hidden"] = 12
        torch.save({**ckpt, "config": config}, path)
    elif kind == "not a checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)


CHECKPOINT_CASES = [
    ("missing", "bad.pt: no such checkpoint file"),
    ("truncated", "bad.pt: not a readable checkpoint (truncated or corrupt?)"),
    ("corrupt", "bad.pt: not a readable checkpoint (truncated or corrupt?)"),
    ("version", "bad.pt: checkpoint format version 99, this spinn reads version 1"),
    ("crafted", "bad.pt: refused to load: it holds objects other than tensors and plain containers"),
    ("vocab", "bad.pt: model weight 'embed.weight' has shape ("),
    ("config", "bad.pt: model weight 'encoder."),
    ("not a checkpoint", "bad.pt: not a spinn checkpoint: missing key(s) format_version"),
]


@pytest.mark.parametrize(("kind", "expected"), CHECKPOINT_CASES)
def test_bad_checkpoints_are_refused_by_evaluate_and_predict(trained, tmp_path, capsys, kind, expected):
    bad, marker = tmp_path / "bad.pt", tmp_path / "pwned"
    _damage(kind, trained / "best.pt", bad, marker)
    message = user_error(evaluate_main, ["--checkpoint", str(bad), "--no-progress"], capsys)
    assert expected in message
    message = user_error(
        predict_main, ["--checkpoint", str(bad), "--premise", "a", "--hypothesis", "b"], capsys
    )
    assert expected in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("truncated", "last.pt: not a readable checkpoint"),
        ("version", "last.pt: checkpoint format version 99"),
        ("crafted", "last.pt: refused to load"),
        ("vocab", "the checkpoint to resume from: model weight 'embed.weight' has shape ("),
    ],
)
def test_resume_refuses_a_bad_last_checkpoint(trained, tmp_path, capsys, kind, expected):
    run = tmp_path / "run"
    run.mkdir()
    _damage(kind, trained / "last.pt", run / "last.pt", tmp_path / "pwned")
    assert expected in user_error(train_main, ["--resume", str(run)], capsys)
    assert not (tmp_path / "pwned").exists()


def test_resume_needs_a_training_checkpoint(trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((trained / "best.pt").read_bytes())
    assert "without optimizer" in user_error(train_main, ["--resume", str(run)], capsys)


def _writer(path, step):
    """Write checkpoints of growing step over `path` until killed."""
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP thread pool
    while True:
        step += 1
        save_checkpoint(
            {"config": {}, "vocab": {}, "model": {"w": torch.full((1 << 20,), float(step))}, "step": step},
            path,
        )


def test_sigkill_while_writing_a_checkpoint_leaves_a_whole_one(tmp_path):
    path = tmp_path / "last.pt"
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    last = 0
    for round_ in range(6):
        proc = fork.Process(target=_writer, args=(path, round_ * 1000))
        proc.start()
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        ckpt = load_checkpoint(path)
        assert ckpt["step"] >= last and torch.equal(
            ckpt["model"]["w"], torch.full((1 << 20,), float(ckpt["step"]))
        )
        last = ckpt["step"]


def _poisoned(trained, path, key="model"):
    ckpt = torch.load(trained / "last.pt", weights_only=True)
    name = next(name for name, w in ckpt[key].items() if w.is_floating_point())
    ckpt[key][name] = ckpt[key][name].clone()
    ckpt[key][name].view(-1)[:2] = float("nan")
    torch.save(ckpt, path)
    return name


def test_checkpoints_with_nan_weights_are_refused_everywhere_naming_the_tensor(trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    name = _poisoned(trained, bad)
    expected = f"{bad}: model tensor {name!r} (2 of "
    assert expected in user_error(evaluate_main, ["--checkpoint", str(bad), "--no-progress"], capsys)
    argv = ["--checkpoint", str(bad), "--premise", "A dog runs.", "--hypothesis", "A dog moves."]
    assert expected in user_error(predict_main, argv, capsys)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _poisoned(trained, run / "last.pt")
    assert "last.pt: model tensor" in user_error(train_main, ["--resume", str(run)], capsys)
    ckpt = torch.load(bad, weights_only=True)
    with pytest.raises(CheckpointError, match="refused to write the checkpoint: model tensor"):
        save_checkpoint(ckpt, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_a_crafted_checkpoint_is_refused_without_torchs_advice_to_load_it_anyway(trained, tmp_path, capsys):
    marker, bad = tmp_path / "pwned", tmp_path / "bad.pt"
    torch.save({**torch.load(trained / "best.pt", weights_only=True), "step": WritesAFile(marker)}, bad)
    message = user_error(evaluate_main, ["--checkpoint", str(bad), "--no-progress"], capsys)
    assert (
        "refused to load: it holds objects other than tensors and plain containers (a reference to exec)"
        in message
    )
    assert "weights_only" not in message and "safe_globals" not in message and not marker.exists()
