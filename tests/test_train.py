"""Training on a slice of the real data: end to end through the scripts, and exact resume."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nli_rows import first_rows
from tiny_runs import ROOT, run_script, sets, tiny_model, user_error
from torch.optim.swa_utils import AveragedModel

from spinn import cli
from spinn.config import Config
from spinn.model import NLIClassifier
from spinn.train import main as train_main
from spinn.train import plot_learning_curve, setup_optimizer, stop_on_signals, warmed_up_ema

TINY = tiny_model(16)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The first rows of the embedded sample's SNLI train and dev files, and its GloVe rows."""
    return first_rows(tmp_path_factory.mktemp("data"), train=96, dev=80)


def _log(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    proc = run_script(f"scripts/{name}.py", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_train_evaluate_predict_through_the_scripts(tiny_data, tmp_path):
    """As a user runs them: the small config on a slice of the real data, for 6 steps."""
    run = tmp_path / "run"
    overrides = [*TINY, *tiny_data, f"train.out_dir={run}", "train.max_steps=6", "train.eval_every=4"]
    overrides += ["train.log_every=1"]
    out = _script("train", "--config", "configs/small.yaml", *sets(*overrides))
    assert "done (max_steps) after 6 steps" in out.stdout

    train_log, dev_log = _log(run, "train"), _log(run, "dev")
    assert [r["step"] for r in train_log] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in dev_log] == [4, 6]
    # Three balanced classes: an untrained classifier starts near chance, ln 3 = 1.1.
    assert all(math.isfinite(r["loss"]) for r in train_log) and 0.7 < train_log[0]["loss"] < 2.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"] is None and summary["dev"]["pairs"] == 79  # 80 rows, one without gold label
    assert summary["dev"]["accuracy"] == max(r["acc"] for r in dev_log)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        assert ckpt["config"]["model"]["d_hidden"] == 16 and ckpt["vocab"]["itos"][:2] == ["<pad>", "<unk>"]
    assert (run / "config.yaml").exists() and (run / "vocab.json").exists()

    out = _script("evaluate", "--checkpoint", str(run), "--split", "dev", "--no-progress", "--threads", "1")
    assert f"accuracy {summary['dev']['accuracy']:.4f}" in out.stdout
    predictions = (run / "predictions_dev.jsonl").read_text().splitlines()
    assert len(predictions) == 79 and set(json.loads(predictions[0])) >= {
        "pairID",
        "gold_label",
        "probabilities",
    }
    metrics = json.loads((run / "predictions_dev.metrics.json").read_text())
    assert metrics["accuracy"] == summary["dev"]["accuracy"] and len(metrics["confusion"]) == 3

    parse = "( ( A man ) ( plays ( a guitar ) ) )"
    out = _script(
        "predict",
        "--checkpoint",
        str(run / "best.pt"),
        "--premise",
        parse,
        "--hypothesis",
        "A person isn't idle.",
        "--threads",
        "auto",
    )
    record = json.loads(out.stdout)
    assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert record["premise_tree_source"] == "given" and record["hypothesis_tree_source"] == "balanced"
    assert record["hypothesis_tree"] == "( ( ( a person ) is ) ( ( n't idle ) . ) )"  # lower-cased: GloVe 6B
    assert "read as balanced binary trees" in out.stderr


@pytest.mark.slow
def test_resume_continues_exactly(tiny_data, tmp_path):
    """Six batches per epoch; stopping after 8 steps and resuming to 15 crosses epochs on both sides.
    A log line every 3 steps: the one at step 9 averages steps 7-9 across the resume."""
    common = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    common += ["--set", "train.log_every=3", "--set", "train.eval_every=5", "--set", "model.dropout=0.3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train_main([*common, "--set", f"train.out_dir={whole}", "--max-steps", "15"]) == 0
    assert train_main([*common, "--set", f"train.out_dir={part}", "--max-steps", "8"]) == 0
    assert train_main(["--resume", str(part), "--max-steps", "15", "--set", "train.progress=false"]) == 0

    lines = [(r["step"], r["loss"], r["acc"]) for r in _log(whole, "train")]
    assert [s for s, _, _ in lines] == [3, 6, 9, 12, 15]
    assert [(r["step"], r["loss"], r["acc"]) for r in _log(part, "train")] == lines
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 15 and a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_loader_workers_train_the_same_weights_and_resume_exactly(tiny_data, tmp_path):
    """Batches prepared by a background process: the weights of batches prepared in the training
    process; and stopped after 8 steps, with the worker already ahead, a resume still continues at
    the right batch."""
    common = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    common += ["--set", "train.log_every=1", "--set", "train.eval_every=5", "--set", "model.dropout=0.3"]
    inline, workers, part = tmp_path / "inline", tmp_path / "workers", tmp_path / "part"
    assert train_main([*common, "--set", f"train.out_dir={inline}", "--max-steps", "15"]) == 0
    common += ["--set", "train.loader_workers=1"]
    assert train_main([*common, "--set", f"train.out_dir={workers}", "--max-steps", "15"]) == 0
    assert train_main([*common, "--set", f"train.out_dir={part}", "--max-steps", "8"]) == 0
    stopped = torch.load(part / "last.pt", weights_only=True)["sampler"]
    assert (stopped["epoch"], stopped["batches_consumed"]) == (1, 2)  # 6 batches an epoch
    assert train_main(["--resume", str(part), "--max-steps", "15", "--set", "train.progress=false"]) == 0

    losses = [r["loss"] for r in _log(inline, "train")]
    assert len(losses) == 15
    assert [r["loss"] for r in _log(workers, "train")] == [r["loss"] for r in _log(part, "train")] == losses
    a, b, c = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (inline, workers, part))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_a_moving_average_is_what_is_evaluated_saved_and_resumed(tiny_data, tmp_path):
    """optim.ema_decay: checkpoints hold the average as "model", the optimiser's weights beside it."""
    common = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    common += ["--set", "optim.ema_decay=0.9", "--set", "train.eval_every=3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train_main([*common, "--set", f"train.out_dir={whole}", "--max-steps", "8"]) == 0
    assert train_main([*common, "--set", f"train.out_dir={part}", "--max-steps", "7"]) == 0
    step7 = torch.load(part / "last.pt", weights_only=True)
    assert train_main(["--resume", str(part), "--max-steps", "8", "--set", "train.progress=false"]) == 0

    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    for key in ("model", "online_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    weights = "encoder.reduce.gates.weight"
    assert not torch.equal(a["model"][weights], a["online_model"][weights])
    # The 8th update of the average (n = 7 before it): decay min(0.9, (1 + 7) / (10 + 7)).
    decay = 8 / 17
    expected = decay * step7["model"][weights] + (1 - decay) * a["online_model"][weights]
    torch.testing.assert_close(a["model"][weights], expected, atol=1e-6, rtol=1e-5)

    # The logged dev accuracy at the last step is that of the average, which evaluate.py loads.
    out = _script("evaluate", "--checkpoint", str(whole / "last.pt"), "--split", "dev", "--no-progress")
    assert f"accuracy {_log(whole, 'dev')[-1]['acc']:.4f}" in out.stdout


@pytest.mark.slow
def test_resume_keeps_the_architecture_of_the_checkpoint(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    args += ["--set", f"train.out_dir={run}"]
    # data.limit keeps the first pairs of each split: 32 training pairs are 2 batches of 16.
    assert train_main([*args, "--max-steps", "2", "--set", "data.limit=32"]) == 0
    assert json.loads((run / "summary.json").read_text())["dev"]["pairs"] == 32
    assert "already holds a run" in user_error(train_main, [*args, "--max-steps", "3"], capsys)
    assert train_main(["--resume", str(run), "--max-steps", "3", "--set", "model.d_hidden=32"]) == 0
    assert "model.d_hidden: the checkpoint has 16, the config 32; resuming with 16" in capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["config"]["model"]["d_hidden"] == 16


@pytest.mark.slow
def test_resume_takes_a_new_learning_rate_and_keeps_what_the_states_need(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    assert (
        train_main([*args, "--set", f"train.out_dir={run}", "--set", "train.log_every=1", "--max-steps", "2"])
        == 0
    )
    # Another data folder holding only a dev file: the training data stays the checkpoint's file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dev = next(o.split("=", 1)[1] for o in tiny_data if o.startswith("data.data_dir="))
    (elsewhere / "snli_1.0_dev.jsonl").write_bytes((Path(dev) / "snli_1.0_dev.jsonl").read_bytes())
    resume = ["--resume", str(run), "--set", "optim.lr=1e-4", "--set", "optim.name=sgd"]
    resume += ["--set", f"data.data_dir={elsewhere}", "--set", "data.train=nope.jsonl", "--max-steps", "4"]
    resume += ["--set", "optim.lr_decay_steps=2"]  # the decay continues from the step reached
    assert train_main([*resume, "--set", f"train.out_dir={tmp_path / 'other'}"]) == 0
    err = capsys.readouterr().err
    assert "optim.name: the checkpoint has 'adam', the config 'sgd'; resuming with 'adam'" in err
    assert f"train.out_dir: a resumed run stays in its folder, {run}" in err
    # The log's lr is the one for the next step: 0.75 ** (step / 100), then 0.75 ** (step / 2).
    lrs = [r["lr"] for r in _log(run, "train")]
    expected = [2e-3 * 0.75 ** (1 / 100), 2e-3 * 0.75 ** (2 / 100), 1e-4 * 0.75 ** (3 / 2), 1e-4 * 0.75**2]
    assert lrs == pytest.approx(expected, rel=1e-6)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.75**2, rel=1e-6)
    assert "lr: 0.0001" in (run / "config.yaml").read_text()  # the resolved config of the resume
    assert ckpt["config"]["data"]["train"] == str(Path(dev) / "snli_1.0_train_0.01.jsonl")


def test_resuming_a_finished_run_trains_and_evaluates_nothing_more(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    assert train_main([*args, "--set", f"train.out_dir={run}", "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--max-steps", "1"]) == 0
    assert "no training left: the run is at step 2, epoch 0 (max_steps reached)" in capsys.readouterr().out
    assert [r["step"] for r in _log(run, "dev")] == [2]


def test_resuming_an_early_stopped_run_trains_nothing_more(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    args += ["--set", f"train.out_dir={run}", "--set", "train.eval_every=1", "--set", "train.patience=1"]
    assert train_main([*args, "--max-steps", "40", "--set", "optim.ema_decay=null"]) == 0
    steps = [r["step"] for r in _log(run, "dev")]
    assert "done (early_stopping)" in capsys.readouterr().out and steps[-1] < 40
    assert train_main(["--resume", str(run), "--set", "train.progress=false"]) == 0
    assert "(early_stopping reached)" in capsys.readouterr().out
    assert [r["step"] for r in _log(run, "dev")] == steps


def test_gradient_clipping_bounds_the_step(tiny_data, tmp_path):
    """One SGD step with lr 1 moves the weights by the clipped gradient: clipped to norms 1e-3 and
    2e-3 (the raw gradient is far larger), the two runs end exactly 1e-3 apart."""
    common = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    common += sets("optim.name=sgd", "optim.lr=1", "optim.ema_decay=null")
    weights = []
    for clip in ("1e-3", "2e-3"):
        out = tmp_path / clip
        assert (
            train_main(
                [
                    *common,
                    "--set",
                    f"optim.grad_clip={clip}",
                    "--set",
                    f"train.out_dir={out}",
                    "--max-steps",
                    "1",
                ]
            )
            == 0
        )
        weights.append(torch.load(out / "last.pt", weights_only=True)["model"])
    a, b = weights
    moved = torch.cat([(b[k].double() - a[k].double()).flatten() for k in a if a[k].is_floating_point()])
    assert moved.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_learning_curve_png_where_matplotlib_is_installed(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [
        {"step": 1, "split": "train", "loss": 1.1, "acc": 0.3},
        {"step": 2, "split": "train", "loss": 1.0, "acc": 0.4},
        {"step": 2, "split": "dev", "loss": 1.05, "acc": 0.35},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not plot_learning_curve(log, tmp_path / "curve.png")
        assert not (tmp_path / "curve.png").exists()
    else:
        assert plot_learning_curve(log, tmp_path / "curve.png")
        assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_adam_and_sgd_update_with_fused_kernels_where_torch_has_them(monkeypatch):
    cfg = Config()
    model = NLIClassifier(20, d_embed=8, d_hidden=8, d_tracker=4, mlp_dim=8)
    for name in ("adam", "sgd"):
        cfg.optim.name = name
        assert setup_optimizer(cfg, model).defaults["fused"] is True, name
    cfg.optim.name = "rmsprop"
    assert isinstance(setup_optimizer(cfg, model), torch.optim.RMSprop)

    # A torch without the kernels for this device (before 2.4 on the CPU) gets the plain update.
    real_adam = torch.optim.Adam

    def adam_without_fused_kernels(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real_adam(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam_without_fused_kernels)
    cfg.optim.name = "adam"
    optimizer = setup_optimizer(cfg, model)
    assert isinstance(optimizer, real_adam) and not optimizer.defaults["fused"]


def test_a_second_signal_stops_at_once_and_the_handlers_are_restored():
    """The first Ctrl-C (or SIGTERM) asks for a checkpoint after the current step; a second one raises
    KeyboardInterrupt at once (the scripts print 'interrupted', exit 130); leaving restores the handlers."""
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # noted, training goes on
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second signal did not stop the loop")
    assert signal.getsignal(signal.SIGINT) is before


# On the CPU torch.compile's inductor backend builds C++: the compiler it looks for by default.
CXX = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX}) for torch.compile")
def test_a_compiled_model_trains_as_the_eager_one(tiny_data, tmp_path):
    """train.compile: without dropout the compiled model's losses and weights are the eager model's."""
    common = ["--config", "configs/small.yaml", *sets(*TINY, *tiny_data)]
    common += ["--set", "train.log_every=1", "--set", "train.eval_every=3", "--set", "model.dropout=0"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train_main([*common, "--set", f"train.out_dir={eager}", "--max-steps", "3"]) == 0
    # In a process of its own: compiling leaves state in torch behind, and inductor's cache folder,
    # empty before, shows that it did compile.
    cache = tmp_path / "inductor"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    argv = [*common, "--set", "train.compile=true", "--set", f"train.out_dir={compiled}", "--max-steps", "3"]
    proc = run_script("scripts/train.py", *argv, env=env)
    assert proc.returncode == 0, proc.stderr
    assert any(cache.rglob("*.py")), "inductor generated no code"

    losses = [r["loss"] for r in _log(eager, "train")]
    assert len(losses) == 3 and losses[0] != losses[2]
    assert [r["loss"] for r in _log(compiled, "train")] == pytest.approx(losses, rel=1e-5)
    a, b = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (eager, compiled))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.parametrize("threads", ["1", "null"])
def test_train_threads_holds_for_the_run_and_is_restored_after_it(tiny_data, tmp_path, capsys, threads):
    before = torch.get_num_threads()
    expected = 1 if threads == "1" else cli.auto_threads()
    overrides = [*TINY, *tiny_data, f"train.out_dir={tmp_path / 'run'}", f"train.threads={threads}"]
    assert train_main(["--config", "configs/small.yaml", "--dry-run", *sets(*overrides)]) == 0
    assert f"device cpu, {expected} CPU thread(s)" in capsys.readouterr().out
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("encoder", "named"), [("spinn", "spinn_pi"), ("lstm", "lstm"), ("cbow", "cbow")])
def test_the_startup_line_names_the_encoder_that_runs(tiny_data, tmp_path, capsys, encoder, named):
    overrides = [*TINY, *tiny_data, f"train.out_dir={tmp_path / 'run'}", f"model.encoder={encoder}"]
    argv = ["--config", "configs/small.yaml", "--dry-run", *sets(*overrides)]
    assert train_main(argv) == 0
    assert f"model: {named}, " in capsys.readouterr().out


def test_the_moving_average_forgets_the_initial_weights_and_statistics():
    """A constant decay of 0.99 would keep 0.99 ** 99 (37%) of the start after 100 updates; a model
    with batch norm then normalises by the initial running variance and predicts one class."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    start = model[0].weight.detach().clone()
    averaged = AveragedModel(model, multi_avg_fn=warmed_up_ema(0.99), use_buffers=True)
    averaged.update_parameters(model)  # the first update copies the start
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_var.fill_(0.01)  # from 1.0 at the start
        model[1].num_batches_tracked.fill_(100)
    for _ in range(100):
        averaged.update_parameters(model)
    left = math.prod(min(0.99, (1 + n) / (10 + n)) for n in range(1, 101))  # n updates before each
    assert left < 0.02
    torch.testing.assert_close(averaged.module[0].weight.detach(), 1 + left * (start - 1))
    torch.testing.assert_close(averaged.module[1].running_var, torch.full((3,), 0.01 + left * 0.99))
    assert int(averaged.module[1].num_batches_tracked) == 100
