import importlib.util

import pytest
import yaml
from tiny_runs import ROOT, run_script, sets, user_error

from spinn.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_model,
    config_from_dict,
    config_to_dict,
    load_config,
)
from spinn.train import main as train_main

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    names = {p.name for p in CONFIGS}
    assert {"small.yaml", "snli_spinn_pi_nt.yaml", "snli_spinn_pi.yaml", "snli_spinn.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates_and_builds_its_model(path):
    cfg = load_config(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and f"--config configs/{path.name}" in text, (
        "open with the command that runs it"
    )
    model = build_model(cfg, vocab_size=12)
    assert model.variant == cfg.model.variant
    if cfg.model.encoder == "spinn":
        assert (model.encoder.tracker is None) == (cfg.model.variant == "spinn_pi_nt")
    else:  # a sequential baseline
        assert type(model.encoder).__name__ == {"cbow": "CBOW", "lstm": "LSTMEncoder"}[cfg.model.encoder]


def test_paper_configs_differ_where_the_paper_tuned_them():
    pi_nt, pi, full = (
        load_config(ROOT / "configs" / f"snli_{v}.yaml") for v in ("spinn_pi_nt", "spinn_pi", "spinn")
    )
    for cfg in (pi_nt, pi, full):
        assert (cfg.optim.name, cfg.optim.lr_decay, cfg.optim.lr_decay_steps) == ("rmsprop", 0.75, 10000)
        assert (cfg.train.batch_size, cfg.model.d_embed, cfg.model.mlp_dim) == (32, 300, 1024)
        assert cfg.model.freeze_embeddings
    assert (pi_nt.optim.lr, pi.optim.lr, full.optim.lr) == (2.98e-4, 7.02e-3, 1.03e-3)
    assert (pi.model.d_tracker, full.model.d_tracker, full.model.mlp_layers) == (61, 44, 1)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n", encoding="utf-8")
    assert load_config(path).optim.lr == 1e-3
    assert load_config(None, ["optim.l2=2e-5"]).optim.l2 == 2e-5


def test_unknown_key_in_file_names_file_key_and_nearest_valid_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "'optim.lrr'" in message
    assert "did you mean 'optim.lr'?" in message and "optim.grad_clip" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=fast", "key 'optim.lr': expected a number, found 'fast' (str)"),
        ("model.d_hidden=true", "key 'model.d_hidden': expected an integer, found True (bool)"),
        ("model.variant=spin", "expected one of spinn_pi_nt, spinn_pi, spinn (did you mean 'spinn'?)"),
        ("model.composition=treelsm", "expected one of treelstm, treegru, tanh (did you mean 'treelstm'?)"),
        ("model.leaf=bilsm", "key 'model.leaf': expected one of projection, lstm, bilstm, gru (did you mean"),
        (
            "model.leaf=bilstm model.composition=tanh model.d_hidden=301",
            "model.leaf: bilstm splits a tanh leaf of d_hidden 301 between two directions",
        ),
        ("modle.d_hidden=3", "unknown key 'modle' (did you mean 'model'?)"),
        ("train.batch_sise=3", "did you mean 'train.batch_size'?"),
        ("model=3", "'model' is a section; set one of its keys: model.variant"),
        ("train.epochs", "expected KEY=VALUE"),
        ("train.batch_size=0", "train.batch_size: expected a value > 0, found 0"),
        ("train.threads=0", "train.threads: expected a value > 0, found 0"),
        ("train.threads=two", "key 'train.threads': expected an integer, found 'two'"),
        ("model.dropout=1.0", "model.dropout: expected a probability in [0, 1), found 1.0"),
        ("optim.ema_decay=1", "optim.ema_decay: expected a factor in (0, 1) or null, found 1"),
        ("model.d_tracker=null", "model.d_tracker: variant 'spinn_pi' needs a Tracker size, found null"),
        ("train.device=gpu", "train.device: expected auto, cpu, cuda, cuda:N or mps, found 'gpu'"),
    ],
)
def test_override_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, override.split())
    assert expected in str(err.value)


def test_overrides_win_and_do_not_touch_the_original():
    base = Config()
    cfg = apply_overrides(base, ["optim.lr=0.5", "model.variant=spinn", "data.test=null"])
    assert (cfg.optim.lr, cfg.model.variant, cfg.data.test) == (0.5, "spinn", None)
    assert (base.optim.lr, base.model.variant) == (Config().optim.lr, "spinn_pi")


def test_round_trip_through_plain_data():
    cfg = load_config(ROOT / "configs" / "small.yaml", ["train.max_steps=7"])
    assert config_from_dict(config_to_dict(cfg), "copy") == cfg


@pytest.mark.slow
def test_config_error_from_the_command_line_is_one_line_and_exit_status_2(tmp_path):
    cmd = ["scripts/train.py", "--config", "configs/small.yaml", "--set", "optim.lrr=1"]
    proc = run_script(*cmd)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: --set optim.lrr=1: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"
    )
    assert "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):  # --debug lets the traceback through
        train_main(cmd[1:] + ["--debug"])


def test_print_config_shows_the_resolved_config_with_the_overrides(capsys):
    argv = ["--config", str(ROOT / "configs" / "small.yaml"), "--set", "optim.lr=0.01", "--print-config"]
    assert train_main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == config_to_dict(load_config(ROOT / "configs" / "small.yaml", ["optim.lr=0.01"]))
    assert printed["optim"]["lr"] == 0.01 and set(printed) == set(config_to_dict(Config()))


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


@pytest.mark.parametrize(
    ("yaml_text", "override", "key", "found"),
    [
        ("optim:\n  lr: .nan\n", None, "optim.lr", "nan"),
        ("optim:\n  l2: .nan\n", None, "optim.l2", "nan"),
        ("optim:\n  lr_decay: .NaN\n", None, "optim.lr_decay", "nan"),
        ("", "optim.grad_clip=.inf", "optim.grad_clip", "inf"),
        ("", "model.dropout=.nan", "model.dropout", "nan"),
        ("", "optim.ema_decay=-.inf", "optim.ema_decay", "-inf"),
    ],
)
def test_nan_and_infinite_config_values_are_refused(tmp_path, capsys, yaml_text, override, key, found):
    (tmp_path / "c.yaml").write_text(yaml_text)
    out = tmp_path / "run"
    argv = ["--config", str(tmp_path / "c.yaml"), *sets(f"train.out_dir={out}")]
    argv += sets(override) if override else []
    message = user_error(train_main, argv, capsys)
    assert f"{key}: expected a finite number, found {found}" in message
    assert not out.exists()


def test_tensorboard_is_off_by_default_and_asking_for_it_without_the_package_is_refused(tmp_path, capsys):
    assert Config().train.tensorboard is False
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "run"
    argv = ["--config", str(ROOT / "configs" / "small.yaml"), *sets("train.tensorboard=true")]
    message = user_error(train_main, [*argv, *sets(f"train.out_dir={out}")], capsys)
    assert "train.tensorboard: true needs the tensorboard package" in message
    assert not out.exists()
