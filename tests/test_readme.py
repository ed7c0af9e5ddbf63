"""The README and docs/ stay true to the code: length, named files, links, and every command's options."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from tiny_runs import ROOT, run_script

from spinn.__main__ import COMMANDS
from spinn.config import load_config

README = ROOT / "README.md"
DOCS = sorted([README, *ROOT.glob("*/README.md"), *ROOT.glob("docs/*.md")])
MAX_README_LINES = 250

#: Repository paths a document names: folders ending in / and files with a suffix.
PATH = re.compile(
    r"(?<![\w./-])((?:configs|scripts|docs|benchmarks|examples|tests|spinn|requirements|\.ci)/(?:[\w.-]+/)*(?:[\w-]+\.\w+)?)"
)
LINK = re.compile(r"\]\(([^)#:]+)(?:#[^)]*)?\)")
#: A test a document names: `test_file.py::test_name`, or `::test_name` in the file named before it.
TEST = re.compile(r"`(?:tests/)?(test_\w+\.py)?::(test_\w+)`")


class Command(NamedTuple):
    """One shell command of a fenced block: the document, the line it starts on, its words."""

    doc: Path
    line: int
    words: list[str]


def fenced_blocks(text: str, language: str) -> Iterator[tuple[int, str]]:
    """(first line number, body) of each ```language block."""
    for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        yield text.count("\n", 0, m.start()) + 2, m.group(1)


def commands(doc: Path, text: str | None = None) -> Iterator[Command]:
    """The commands of a document's bash blocks (of `text`, a part of it, where given), continuation
    lines joined and comments dropped."""
    for first, body in fenced_blocks(doc.read_text(encoding="utf-8") if text is None else text, "bash"):
        line = first
        for shell_line in body.replace("\\\n", " ").splitlines():
            if words := shlex.split(shell_line, comments=True):
                yield Command(doc, line, words)
            line += 1


def entry_point(words: list[str]) -> tuple[str, list[str]] | None:
    """(command name, its arguments) for `spinn NAME ...`, `python -m spinn NAME ...` and
    `python scripts/NAME.py ...` (also under torchrun); None for other commands."""
    if words[0] == "spinn" and len(words) > 1:
        return words[1], words[2:]
    if words[:3] == ["python", "-m", "spinn"] and len(words) > 3:
        return words[3], words[4:]
    if words[0] not in ("python", "torchrun"):
        return None
    for i, word in enumerate(words):
        if m := re.fullmatch(r"scripts/(\w+)\.py", word):
            return m.group(1), words[i + 1 :]
    return None


def test_readme_is_a_short_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_and_link_named_in_the_docs_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    named = {m.group(1) for m in PATH.finditer(text)}
    missing = sorted(p for p in named if "*" not in p and not (ROOT / p).exists())
    links = {m.group(1) for m in LINK.finditer(text)}
    missing += sorted(link for link in links if not (doc.parent / link).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_named_in_the_docs_exists_in_the_file_named(doc: Path) -> None:
    missing = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        file = None
        for m in TEST.finditer(line):
            file = m.group(1) or file
            source = ROOT / "tests" / file if file else None
            if source is None or not source.exists() or f"def {m.group(2)}(" not in source.read_text():
                missing.append(f"{file}::{m.group(2)}")
    assert not missing, f"{doc.relative_to(ROOT)} names tests that do not exist: {missing}"


def documented_commands() -> list[Command]:
    return [c for doc in DOCS for c in commands(doc) if entry_point(c.words) is not None]


@pytest.mark.parametrize("cmd", documented_commands(), ids=lambda c: f"{c.doc.name}:{c.line}")
def test_every_documented_command_parses_and_its_config_loads(cmd: Command) -> None:
    """Each `spinn` or `python scripts/*.py` command of the docs has only options its parser knows,
    and a train command's config with its --set overrides loads (known keys, right types)."""
    name, argv = entry_point(cmd.words)
    where = f"{cmd.doc.relative_to(ROOT)}:{cmd.line}: {shlex.join(cmd.words)}"
    assert name in COMMANDS, f"{where}: no command named {name!r}"
    parser = importlib.import_module(COMMANDS[name]).build_parser()
    parser.add_argument("--debug", action="store_true")
    parser.exit_on_error = False
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as err:
        pytest.fail(f"{where}: {err}")
    if name == "train" and args.config is not None:  # a path from the repository's root, or a shipped name
        load_config(ROOT / args.config if (ROOT / args.config).is_file() else args.config, args.set)


def test_the_documented_commands_are_found() -> None:
    """The parser test above sees the README's quick start and paper commands (the block format holds)."""
    names = [entry_point(c.words)[0] for c in commands(README) if entry_point(c.words)]
    assert {"train", "evaluate", "predict", "download"} <= set(names)


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a markdown text."""
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_encoder_examples_run() -> None:
    """The encoder section's examples run as written, in order: the classifier trains one step, and
    the user's own composition runs through the reference path and gets gradients."""
    body = section(README.read_text(encoding="utf-8"), "Using the encoder in your own model")
    blocks = [code for _, code in fenced_blocks(body, "python")]
    assert len(blocks) == 2
    scope: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["loss"].item() > 0
    assert all(p.grad is not None for p in scope["model"].encoder.parameters())
    encoder, batch = scope["encoder"], scope["batch"]
    h = encoder(torch.randn(*batch.tokens.shape, 300), batch.transitions, batch.lengths).h
    h.sum().backward()
    assert encoder.last_path == "reference" and h.shape == (2, 300)
    assert all(p.grad is not None for p in encoder.reduce.parameters())


def quick_start() -> list[list[str]]:
    """The commands of the README's quick start, in order."""
    body = section(README.read_text(encoding="utf-8"), "Quick start")
    return [command.words for command in commands(README, body)]


def as_process(words: list[str]) -> list[str]:
    """A documented command as this Python runs it: `spinn` is `python -m spinn`, and a repository
    file the command names (scripts/train.py, configs/small.yaml) is given by its absolute path."""
    if words[0] == "spinn":
        return [sys.executable, "-m", "spinn", *words[1:]]
    assert words[0] == "python", f"the quick start runs spinn or python, found {words[0]!r}"
    return [sys.executable, *(str(ROOT / w) if "/" in w and (ROOT / w).is_file() else w for w in words[1:])]


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written_in_an_empty_folder(tmp_path: Path) -> None:
    """The quick start's commands, run in order in an empty folder; training stops after 2 steps."""
    commands = quick_start()
    assert [entry_point(words)[0] for words in commands] == ["train", "evaluate", "predict"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = []
    for words in commands:
        extra = ["--set", "train.max_steps=2", "--set", "train.progress=false"] if words[1] == "train" else []
        done = run_script(*as_process(words)[1:], *extra, cwd=tmp_path, env=env, timeout=600)
        assert done.returncode == 0, f"{shlex.join(words)} failed:\n{done.stderr[-3000:]}"
        out.append(done.stdout)
    assert (tmp_path / "runs" / "small" / "best.pt").is_file()
    assert "accuracy" in out[1]
    prediction = json.loads(out[2].strip().splitlines()[-1])
    assert prediction["label"] in ("entailment", "neutral", "contradiction")
