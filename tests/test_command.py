"""The spinn command (console script and python -m spinn), shipped configs by name, and the wheel."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny_runs import ROOT, run_script, user_error

import spinn
from spinn.__main__ import COMMANDS
from spinn.__main__ import main as spinn_main
from spinn.config import config_to_dict, load_config, shipped_configs
from spinn.shipped import main as configs_main

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_python_dash_m_spinn_lists_the_commands_and_runs_one(tmp_path):
    proc = run(sys.executable, "-m", "spinn", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    listed = proc.stdout.split("commands:\n")[1].splitlines()
    assert [line.split()[0] for line in listed if line.startswith("  ")] == list(COMMANDS)
    proc = run(sys.executable, "-m", "spinn", "train", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: spinn train "), proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(set(COMMANDS.values())))
def test_each_commands_module_prints_its_help_under_python_dash_m(module, tmp_path):
    proc = run(sys.executable, "-m", module, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ") and not proc.stderr, proc.stderr


def test_the_console_script_is_the_same_command(capsys):
    assert pyproject()["project"]["scripts"] == {"spinn": "spinn.__main__:main"}
    with pytest.raises(SystemExit) as exit_:
        spinn_main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"spinn {spinn.__version__}\n"
    script = Path(sys.executable).with_name("spinn")  # where an installed wheel puts it
    if script.exists():
        proc = run(str(script), "--help")
        assert proc.returncode == 0 and all(name in proc.stdout for name in COMMANDS), proc.stderr


def test_an_unknown_command_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        spinn_main(["trian"])
    assert exit_.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


def test_a_shipped_config_resolves_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_to_dict(load_config("small")) == config_to_dict(
        load_config(ROOT / "configs" / "small.yaml")
    )
    # The top-level configs/ of a clone is the package's own folder.
    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) == [
        p.name for p in shipped_configs().values()
    ]


def test_a_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").write_text("train:\n  max_steps: 3\n", encoding="utf-8")
    assert load_config("small").train.max_steps == 3


def test_an_unknown_config_name_is_one_line_listing_the_shipped_ones(tmp_path, capsys):
    argv = ["train", "--config", "smal", "--set", f"train.out_dir={tmp_path / 'run'}"]
    names = ", ".join(shipped_configs())
    assert (
        user_error(spinn_main, argv, capsys)
        == f"error: config 'smal': no such file, nor a shipped config ({names})"
    )
    assert "small" in names and not (tmp_path / "run").exists()


def test_configs_lists_each_name_with_the_first_line_of_its_header(capsys):
    assert configs_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(shipped_configs())
    small = next(line for line in lines if line.startswith("small "))
    header = (ROOT / "configs" / "small.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert small.split(maxsplit=1)[1] == header.removeprefix("# ")


def test_configs_prints_one_and_copies_one_without_overwriting(tmp_path, monkeypatch, capsys):
    shipped = (ROOT / "configs" / "small.yaml").read_text(encoding="utf-8")
    assert configs_main(["small"]) == 0 and capsys.readouterr().out == shipped

    monkeypatch.chdir(tmp_path)
    assert configs_main(["small", "--copy"]) == 0
    assert (tmp_path / "small.yaml").read_text(encoding="utf-8") == shipped
    assert configs_main(["snli_spinn", "--copy", "mine.yaml"]) == 0
    assert load_config("mine.yaml") == load_config("snli_spinn")
    capsys.readouterr()

    (tmp_path / "small.yaml").write_text("# edited\n", encoding="utf-8")
    assert configs_main(["small", "--copy", "."]) == 2
    assert capsys.readouterr().err == (
        "error: small.yaml: already exists; copy to another file with --copy OTHER.yaml\n"
    )
    assert (tmp_path / "small.yaml").read_text(encoding="utf-8") == "# edited\n"
    assert configs_main(["nosuch", "--copy"]) == 2
    assert "config 'nosuch': no such file, nor a shipped config (" in capsys.readouterr().err


def test_the_version_is_written_once():
    project = pyproject()
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spinn.__version__"}
    assert spinn.__version__.count(".") == 2


@pytest.mark.slow
def test_the_wheel_holds_the_configs_the_license_and_the_command(tmp_path):
    """Built from a copy of the tree (setuptools writes build/ next to its sources)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "spinn", src / "spinn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = run(*build, "-w", str(tmp_path / "dist"), str(src))
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"torch_spinn-{spinn.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("spinn/configs/")) == [
        f"spinn/configs/{p.name}" for p in shipped_configs().values()
    ]
    info = f"torch_spinn-{spinn.__version__}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "spinn = spinn.__main__:main" in entry_points


@pytest.mark.slow
def test_user_errors_from_the_scripts_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "none.pt"
    for script, args in [
        ("evaluate", ["--checkpoint", str(missing)]),
        ("predict", ["--checkpoint", str(missing), "--premise", "a", "--hypothesis", "b"]),
    ]:
        proc = run_script(f"scripts/{script}.py", *args)
        assert proc.returncode == 2 and proc.stderr == f"error: {missing}: no such checkpoint file\n"
    proc = run_script("scripts/evaluate.py", "--checkpoint", str(missing), "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr
