import os
import pickle
import random

import numpy as np
import pytest
import torch

from spinn.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


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


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({**_state(), "payload": _Exploit(str(target))}, f)
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
