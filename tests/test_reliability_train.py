"""Fault injection on the training side: bad configs, checkpoints and prediction inputs through the
entry points; SIGKILL, SIGTERM and Ctrl-C during real runs; NaN losses; a full disk (issue 7)."""

import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import sets, user_error

import spinn.train as train_module
from spinn.checkpoint import load_checkpoint, save_checkpoint
from spinn.evaluate import main as evaluate_main
from spinn.model.classifier import NLIClassifier
from spinn.predict import main as predict_main
from spinn.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "expected"),
    [
        (
            "model:\n  d_hiden: 8\n",
            [],
            "c.yaml: unknown key 'model.d_hiden' (did you mean 'model.d_hidden'?)",
        ),
        (
            "train:\n  batch_size: many\n",
            [],
            "c.yaml: key 'train.batch_size': expected an integer, found 'many'",
        ),
        ("", ["model.d_hidden=-4"], "model.d_hidden: expected a value > 0, found -4"),
        ("", ["train.batch_size=0"], "train.batch_size: expected a value > 0, found 0"),
        (
            "",
            ["model.variant=spinn", "model.d_tracker=null"],
            "model.d_tracker: variant 'spinn' needs a Tracker size, found null",
        ),
        ("", ["data.max_length=0"], "data.max_length: expected a value > 0, found 0"),
        (
            "",
            ["data.too_long=cut"],
            "key 'data.too_long': expected one of error, skip, truncate, found 'cut'",
        ),
        ("model: [1, 2\n", [], "c.yaml: not valid YAML"),
    ],
)
def test_config_errors_name_the_key_and_exit_2(tmp_path, capsys, yaml_text, overrides, expected):
    (tmp_path / "c.yaml").write_text(yaml_text)
    argv = ["--config", str(tmp_path / "c.yaml"), *sets(*overrides), "--dry-run"]
    assert expected in user_error(train_main, argv, capsys)


def test_configs_are_data_a_python_tag_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "c.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    message = user_error(train_main, ["--config", str(tmp_path / "c.yaml"), "--dry-run"], capsys)
    assert "c.yaml: not valid YAML" in message and "python/object/apply:os.system" in message
    assert not marker.exists()


# --- checkpoints --------------------------------------------------------------------------------------


class _WritesAFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


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
        torch.save({**ckpt, "step": _WritesAFile(marker)}, path)
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


def test_output_piped_into_head_stops_quietly(trained, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    line = json.dumps({"sentence1": "A man sleeps.", "sentence2": "A person rests."}) + "\n"
    pairs.write_text(line * 3000)  # ~400 KB of output: more than a pipe holds
    script = (
        f"{sys.executable} scripts/predict.py --checkpoint {trained / 'best.pt'} --input {pairs} | head -1"
    )
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout)["label"] in ("entailment", "neutral", "contradiction")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_evaluate_reads_a_full_spinn_both_ways_into_separate_files(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert (
        train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=1", "model.variant=spinn")])
        == 0
    )
    probabilities = {}
    for how in ("given", "predicted"):
        argv = ["--checkpoint", str(run / "best.pt"), "--transitions", how, "--no-progress"]
        assert evaluate_main(argv) == 0
        m = json.loads((run / f"predictions_dev_{how}.metrics.json").read_text())
        assert m["transitions"] == how and 0 <= m["parse_accuracy"] <= 1
        rows = [json.loads(line) for line in (run / f"predictions_dev_{how}.jsonl").read_text().splitlines()]
        assert len(rows) == m["pairs"]
        probabilities[how] = [r["probabilities"] for r in rows]
    # The two readings build different trees: the barely trained parser does not reproduce SNLI's.
    assert probabilities["given"] != probabilities["predicted"]


def test_batch_norm_with_one_pair_per_process_is_refused_before_anything_runs(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "model.batch_norm=true", "train.batch_size=1")]
    assert user_error(train_main, argv, capsys) == (
        "error: train.batch_size 1 gives 1 pair per process and batch norm (model.batch_norm) cannot "
        "train on one: use at least 2"
    )
    assert not run.exists()


def test_compile_without_a_cpp_compiler_is_refused_before_anything_runs(tiny_data, tmp_path):
    """torch.compile on the CPU where inductor finds no C++ compiler: $CXX, which inductor reads when
    the process starts, names a missing one."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDUCTOR_INSTALL_GXX"}  # no conda g++ either
    env |= {"PYTHONPATH": str(ROOT), "CXX": str(tmp_path / "no-g++")}
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.compile=true")]
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr == (
        "error: train.compile: torch.compile on the CPU needs a C++ compiler, and none was found (g++, "
        "or the one $CXX names): install one, or set train.compile=false\n"
    ), proc.stderr
    assert not run.exists()


def test_an_unknown_device_is_a_user_error(trained, capsys):
    for main, extra in ((evaluate_main, []), (predict_main, ["--premise", "a", "--hypothesis", "b"])):
        argv = ["--checkpoint", str(trained / "best.pt"), "--device", "gpu0", *extra]
        assert (
            user_error(main, argv, capsys) == "error: device 'gpu0': expected auto, cpu, cuda, cuda:N or mps"
        )


def test_evaluate_scores_the_runs_splits_as_it_did_and_any_other_file_whole(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert train_main([*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=1", "data.limit=10")]) == 0
    dev = next(a.split("=", 1)[1] for a in tiny_data if a.startswith("data.data_dir=")) + "/dev.jsonl"
    pairs = {}
    for which in (["--split", "dev"], ["--data", dev]):
        out = tmp_path / f"{which[0][2:]}.jsonl"
        argv = ["--checkpoint", str(run / "best.pt"), *which, "--output", str(out), "--no-progress"]
        assert evaluate_main(argv) == 0
        pairs[which[0]] = json.loads(out.with_suffix(".metrics.json").read_text())["pairs"]
    assert pairs == {"--split": 10, "--data": 24}


def test_evaluate_elsewhere_says_the_data_dir_is_relative(tiny_data, tmp_path, monkeypatch, capsys):
    """A run trained with a relative data.data_dir, evaluated from another folder."""
    root = Path(next(a.split("=", 1)[1] for a in tiny_data if a.startswith("data.data_dir=")))
    run = tmp_path / "run"
    monkeypatch.chdir(root.parent)
    overrides = sets(f"train.out_dir={run}", "train.max_steps=1", f"data.data_dir={root.name}")
    assert train_main([*tiny_data, *overrides]) == 0
    monkeypatch.chdir(tmp_path)
    assert user_error(evaluate_main, ["--checkpoint", str(run), "--no-progress"], capsys) == (
        f"error: {root.name}/dev.jsonl: no such file; the run's config has data.data_dir '{root.name}', "
        f"which is read relative to the current folder ({tmp_path}): run from the folder it trained in, "
        "or pass --data-dir DIR"
    )
    assert evaluate_main(["--checkpoint", str(run), "--data-dir", str(root), "--no-progress"]) == 0


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


# --- prediction input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("premise", "expected"),
    [
        ("", "pair 1: premise: empty sentence"),
        ("   ", "pair 1: premise: empty sentence"),
        ("qwxz zzkq", "pair 1: premise: none of its 2 words is in the model's vocabulary"),
        ("( ( A dog ) runs ) )", "pair 1: premise: unbalanced parse"),
        ("( A dog runs )", "pair 1: premise: non-binary parse"),
    ],
)
def test_bad_prediction_input_names_the_pair_and_side(trained, capsys, premise, expected):
    argv = ["--checkpoint", str(trained), "--premise", premise, "--hypothesis", "A dog moves."]
    assert expected in user_error(predict_main, argv, capsys)


def test_bad_prediction_file_names_the_line(trained, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"sentence1": "A dog runs.", "sentence2": "A dog moves."}) + "\n{oops\n")
    argv = ["--checkpoint", str(trained), "--input", str(path)]
    assert f"{path}:2: bad JSON" in user_error(predict_main, argv, capsys)


def test_user_errors_from_the_scripts_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "none.pt"
    for script, args in [
        ("evaluate", ["--checkpoint", str(missing)]),
        ("predict", ["--checkpoint", str(missing), "--premise", "a", "--hypothesis", "b"]),
    ]:
        proc = subprocess.run(
            [sys.executable, f"scripts/{script}.py", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and proc.stderr == f"error: {missing}: no such checkpoint file\n"
    proc = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--checkpoint", str(missing), "--debug"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


# --- interrupted runs ---------------------------------------------------------------------------------


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


def _wait_for_step(run, above, proc, timeout=120):
    """Wait until log.jsonl shows a training step above `above` (or the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = (run / "log.jsonl").read_text().splitlines()
            steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
        except (OSError, json.JSONDecodeError):
            steps = []
        if steps and max(steps) > above:
            return max(steps)
        time.sleep(0.005)
    return None


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_killed_and_interrupted_runs_resume_to_the_same_final_weights(tiny_data, tmp_path, loader_workers):
    """SIGTERM, Ctrl-C and SIGKILL at random moments of a real run, sent to its whole process group as a
    terminal or a job scheduler does (loader workers included); each time --resume continues, and the
    run ends with exactly the weights of an uninterrupted one."""
    common = sets(
        "train.max_steps=16",
        "train.epochs=null",
        "train.patience=null",
        "train.eval_every=3",
        "model.dropout=0.3",
        f"train.loader_workers={loader_workers}",
    )
    whole, part = tmp_path / "whole", tmp_path / "part"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The uninterrupted run in a process of its own too: this one's settings (threads) may differ.
    whole_argv = [sys.executable, "scripts/train.py", *tiny_data, *common, *sets(f"train.out_dir={whole}")]
    subprocess.run(whole_argv, cwd=ROOT, env=env, capture_output=True, check=True, timeout=120)

    rng = random.Random(7)
    argv = [sys.executable, "scripts/train.py", *tiny_data, *common, *sets(f"train.out_dir={part}")]
    step = 0
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGKILL):
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        seen = _wait_for_step(part, step, proc)
        time.sleep(rng.uniform(0, 0.03))
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break  # it finished before the signal
        assert seen is not None, err
        if sig != signal.SIGKILL:
            assert proc.returncode == 128 + sig and f"{sig.name} at step" in err, err
        assert "Traceback" not in err
        step = load_checkpoint(part / "last.pt")["step"]
        argv = [sys.executable, "scripts/train.py", "--resume", str(part)]
    if proc.returncode != 0:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 16
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [
        r["loss"]
        for r in map(json.loads, (whole / "log.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ] == [
        r["loss"]
        for r in map(json.loads, (part / "log.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert not [p.name for p in part.iterdir() if p.name.endswith(".tmp")]


# --- non-finite loss and a full disk ------------------------------------------------------------------


def _record_saves(monkeypatch):
    saves = []
    real = train_module.save_checkpoint

    def recording(state, path):
        real(state, path)
        saves.append((Path(path).name, state["step"]))

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    return saves


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_naming_step_and_batch_and_keeps_the_checkpoints(
    tiny_data, tmp_path, capsys, monkeypatch, bad
):
    real_loss = NLIClassifier.loss
    calls = []

    def loss(self, out, labels):
        calls.append(1)
        value = real_loss(self, out, labels)
        return value * bad if len(calls) == 8 else value

    monkeypatch.setattr(NLIClassifier, "loss", loss)
    saves = _record_saves(monkeypatch)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert f"step 8 (epoch 1, batch 2 of 6): the training loss is {bad}" in err, err
    assert saves[-1] == ("last.pt", 6) and all(step <= 6 for _, step in saves)
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert load_checkpoint(run / "best.pt")["step"] in (3, 6)
    assert max(json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()) == 7


def test_a_non_finite_gradient_under_a_finite_loss_stops_before_the_step(
    tiny_data, tmp_path, capsys, monkeypatch
):
    real_loss = NLIClassifier.loss
    calls = []

    def loss(self, out, labels):
        calls.append(1)
        value = real_loss(self, out, labels)
        if len(calls) == 5:
            # sqrt'(0) is inf: the loss stays finite, every gradient becomes NaN.
            value = value + 0 * torch.sqrt(out.logits.sum() * 0)
        return value

    monkeypatch.setattr(NLIClassifier, "loss", loss)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "step 5 (epoch 0, batch 5 of 6): the training gradient norm is nan" in err, err
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 3
    assert all(torch.isfinite(w).all() for w in last["model"].values() if w.is_floating_point())


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(
    tiny_data, tmp_path, capsys, monkeypatch
):
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        if any(name in str(getattr(f, "name", "")) for name in ("last.pt", "best.pt")):
            calls.append(1)
        # Checkpoints: last.pt at step 0, best.pt and last.pt at step 3, the first of step 6 fails.
        if len(calls) == 4:
            f.write(b"partial data")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=20", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and ".pt: cannot write" in err[0], err
    assert load_checkpoint(run / "last.pt")["step"] == 3 and load_checkpoint(run / "best.pt")["step"] == 3
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_the_log_is_a_clear_error_and_resume_works(
    tiny_data, tmp_path, capsys, monkeypatch
):
    appends = []

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if str(path).endswith("log.jsonl") and mode.startswith("a"):
            appends.append(1)
            if len(appends) == 5:  # train step 4: half a line reaches the disk, then it is full
                f.write('{"step": 4, "spl')
                f.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr(train_module, "open", full_disk_open, raising=False)
    run = tmp_path / "run"
    argv = [*tiny_data, *sets(f"train.out_dir={run}", "train.max_steps=8", "train.eval_every=3")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and f"{run / 'log.jsonl'}: cannot write the log (No space left on device)" in err[0]
    ), err
    assert load_checkpoint(run / "last.pt")["step"] == 3
    monkeypatch.undo()
    assert train_main(["--resume", str(run), "--set", "train.progress=false"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 8]
