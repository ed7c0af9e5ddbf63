"""The typed configuration of a training run: every default lives here and nowhere else.

A config file is YAML with the sections below (``data``, ``vocab``, ``model``, ``optim``, ``train``);
a key left out takes the default written here. Command-line overrides are dotted and win over the
file: ``--set optim.lr=1e-3 --set model.variant=spinn``. Unknown keys, values of the wrong type and
impossible values are `ConfigError` s that name the key (and, for unknown keys, the nearest valid one).

Configs are data: YAML is read with a safe loader and nothing in it is evaluated.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from spinn.cli import DEVICE_NAMES, is_device_name
from spinn.data import sample
from spinn.data.classify import FORMATS, SST_LABELS, label_names
from spinn.data.snli import LABELS, TOO_LONG_POLICIES
from spinn.errors import SpinnError
from spinn.io import open_input, write_text
from spinn.model.baselines import ENCODERS, POOLINGS
from spinn.model.classifier import VARIANTS, NLIClassifier
from spinn.model.compositions import COMPOSITIONS
from spinn.model.leaves import LEAVES
from spinn.transitions import TRIVIAL_TREES

# The model's and the reader's own lists of names, as the schema's types (a Literal of a tuple is the
# Literal of its items), so that no list is kept in sync by hand.
Variant = Literal[VARIANTS]
Composition = Literal[tuple(COMPOSITIONS)]
Leaf = Literal[LEAVES]
Encoder = Literal[ENCODERS]
Pooling = Literal[tuple(dict.fromkeys(p for ps in POOLINGS.values() for p in ps))]
Optimizer = Literal["rmsprop", "adam", "sgd"]
TooLong = Literal[TOO_LONG_POLICIES]
Task = Literal["nli", "classify"]
ClassifyFormat = Literal[FORMATS]
SSTLabels = Literal[tuple(SST_LABELS)]
Trees = Literal[("given", *TRIVIAL_TREES)]
VARIANTS_WITH_TRACKER = ("spinn_pi", "spinn")


class ConfigError(SpinnError):
    """An unknown key, a value of the wrong type or an impossible value in a config or an override."""


#: The configs shipped inside the package; the repository's top-level configs/ links here.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Each shipped config's file by its name (the file name without .yaml), in name order."""
    return {p.stem: p for p in sorted(SHIPPED_CONFIGS.glob("*.yaml"))}


def shipped_config(name: str) -> Path:
    """The file of the shipped config `name`.

    Raises:
        ConfigError: no shipped config has that name (the message lists those there are).
    """
    shipped = shipped_configs()
    if name not in shipped:
        raise ConfigError(f"config {name!r}: no such file, nor a shipped config ({', '.join(shipped)})")
    return shipped[name]


def find_config(name_or_path: str | Path) -> Path:
    """A config by path, or a shipped one by name: ``small`` is spinn/configs/small.yaml.

    An existing file wins; any other bare name (no folder, no suffix) is looked up among the shipped
    configs; the rest is returned as a path, for the reader to report if it is missing.

    Raises:
        ConfigError: a bare name that is neither a file nor a shipped config.
    """
    path = Path(name_or_path)
    if path.is_file() or path.suffix or len(path.parts) != 1:
        return path
    return shipped_config(path.name)


@dataclass
class DataConfig:
    """Where the data files are, and how to read them.

    ``train``/``dev``/``test`` (and ``vocab.glove``) are relative to ``data_dir`` unless absolute;
    ``data_dir`` is relative to the current directory, or ``spinn:sample``: the SNLI and GloVe sample
    shipped inside the package (`spinn.data.sample`), wherever it is installed.
    """

    #: A folder, or spinn:sample for the sample inside the package.
    data_dir: str = "data"
    train: str = "snli_1.0/snli_1.0_train.jsonl"
    dev: str = "snli_1.0/snli_1.0_dev.jsonl"
    #: null: no test split (the run's summary then reports dev only).
    test: str | None = "snli_1.0/snli_1.0_test.jsonl"
    #: Lower-case every word (for the lower-case GloVe 6B and 42B vectors).
    lowercase: bool = False
    #: Skip and count malformed rows instead of stopping at the first one.
    skip_invalid: bool = False
    #: Use only the first N labelled pairs of each split (smoke tests); null: all of them.
    limit: int | None = None
    #: Where the parsed splits and GloVe rows are cached; null: $SPINN_CACHE_DIR, else
    #: $XDG_CACHE_HOME/spinn, else ~/.cache/spinn (never beside the data; skipped where not writable).
    cache_dir: str | None = None
    #: The most words a sentence may have; null: no limit.
    max_length: int | None = None
    #: A pair with a sentence over max_length: error (stop, naming the line), skip (leave it out and
    #: count it) or truncate (keep the first max_length words, still one binary tree).
    too_long: TooLong = "error"
    #: task classify: sst (labelled PTB-style trees, as the Stanford Sentiment Treebank ships them) or
    #: tsv (label<TAB>binary parse, as the ListOps files); see spinn.data.classify.
    format: ClassifyFormat = "sst"
    #: format sst: binary (neutral sentences dropped, 0-1 negative, 3-4 positive) or fine (5 classes).
    sst_labels: SSTLabels = "binary"
    #: format tsv: the labels are the class ids 0 .. num_classes - 1.
    num_classes: int = 10
    #: The trees the encoder follows: given (the data's parses), or the trivial left-branching,
    #: right-branching or balanced tree over each sentence's words, at training and evaluation (an
    #: ablation: does the parse matter?).
    transitions: Trees = "given"
    #: format sst: train on every labelled phrase (each node of each training tree, distinct ones
    #: once), not only the sentences; dev and test are always scored on whole sentences.
    phrases: bool = False
    #: Refuse a pair whose binary parse has other words than its sentence1/sentence2 text (compared
    #: without spaces and punctuation): a damaged or shifted row. false: keep such pairs and count them,
    #: for corpora whose tokenisation changes the words.
    check_text: bool = True

    def root(self) -> Path:
        """The folder `data_dir` names: the embedded sample's for ``spinn:sample``."""
        return sample.SAMPLE_DIR if self.data_dir == sample.SAMPLE else Path(self.data_dir).expanduser()

    def path(self, name: str | None) -> Path | None:
        """`name` resolved against `data_dir`; None stays None."""
        if name is None:
            return None
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.root() / p


@dataclass
class VocabConfig:
    """The word vocabulary and its pretrained vectors."""

    #: Keep words seen at least this often in the splits the vocabulary is built from.
    min_freq: int = 1
    #: Also add the words of dev and test (never their labels). With frozen GloVe vectors this lets
    #: those words keep their meaning instead of becoming <unk>; it has no effect on trained vectors.
    include_eval_words: bool = True
    #: GloVe text file (.txt, .zip or .gz), relative to data.data_dir; null: random embeddings.
    glove: str | None = "glove.840B.300d.txt"


@dataclass
class ModelConfig:
    """Architecture; the keyword arguments of `spinn.model.classifier.NLIClassifier` (the defaults here
    are the paper's SPINN-PI and differ from the classifier's own in d_tracker, mlp_layers and
    batch_norm)."""

    #: spinn_pi_nt: no Tracker; spinn_pi: Tracker, given parses; spinn: the Tracker predicts transitions.
    variant: Variant = "spinn_pi"
    #: Word vector size; must equal the GloVe file's dimension when vocab.glove is set.
    d_embed: int = 300
    #: Size of the TreeLSTM state h (the paper's "model dim" 600 counts h and c together).
    d_hidden: int = 300
    #: Tracker LSTM size; null for spinn_pi_nt, required by spinn_pi and spinn.
    d_tracker: int | None = 61
    #: How REDUCE composes two children: treelstm (the paper's), treegru or tanh
    #: (`spinn.model.COMPOSITIONS`; the last two run on the slower reference path).
    composition: Composition = "treelstm"
    #: What SHIFT puts on the stack: projection (of each word alone, the paper's), or the output of an
    #: lstm, gru or bilstm run over the sentence's words first.
    leaf: Leaf = "projection"
    mlp_layers: int = 2
    mlp_dim: int = 1024
    #: Dropout on the word embeddings (before their projection) and in the MLP.
    dropout: float = 0.1
    batch_norm: bool = False
    #: Keep the pretrained word vectors fixed (the paper); a learned projection adapts them.
    freeze_embeddings: bool = True
    #: Weight of the transition-prediction loss (spinn only).
    transition_loss_weight: float = 1.0
    #: spinn only: at evaluation, follow the given parses instead of the predicted transitions.
    eval_given_transitions: bool = False
    #: The sentence encoder: spinn (the variant above), or a sequential baseline that ignores the
    #: parses: cbow (a bag of the word vectors) or lstm.
    encoder: Encoder = "spinn"
    #: cbow: sum, mean or max of the word vectors; lstm: last (its final state), mean or max of its outputs.
    pooling: Pooling = "max"
    #: lstm only: read each sentence in both directions (sentence vectors of 2 d_hidden).
    bidirectional: bool = False


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule: lr * lr_decay ** (step / lr_decay_steps)."""

    #: adam and sgd update with torch's fused kernels where it has them for the device (CUDA; the CPU
    #: from torch 2.4).
    name: Optimizer = "rmsprop"
    lr: float = 1e-3
    #: L2 penalty lambda * sum(theta^2) on trainable weights (applied as weight decay 2 * lambda).
    l2: float = 0.0
    #: Clip the gradient norm to this; null: no clipping.
    grad_clip: float | None = 5.0
    lr_decay: float = 0.75
    lr_decay_steps: int = 10000
    #: Evaluate and checkpoint an exponential moving average of the weights, updated after every step
    #: with this decay (0.99 averages over about the last 100 steps); null: the weights themselves.
    ema_decay: float | None = None


@dataclass
class TrainConfig:
    """The loop: batches, stopping, evaluation, logging, device."""

    #: Run folder: checkpoints, log.jsonl, summary.json, learning_curve.png. Relative to the current dir.
    out_dir: str = "runs/spinn"
    seed: int = 0
    #: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps.
    device: str = "auto"
    #: bf16 autocast; CUDA only (ignored with a warning elsewhere).
    bf16: bool = False
    #: torch.compile the model (on the CPU inductor builds C++: it needs a C++ compiler).
    compile: bool = False
    #: The global batch: under torchrun each of the K processes takes batch_size / K pairs per step.
    batch_size: int = 32
    eval_batch_size: int = 256
    #: Stop after this many passes over train; null: only max_steps stops.
    epochs: int | None = 10
    #: Stop after this many optimiser steps; null: only epochs stops.
    max_steps: int | None = None
    #: Evaluate on dev (and checkpoint) every N steps, and at the end.
    eval_every: int = 1000
    #: Stop after this many evaluations without a new best dev accuracy; null: never stop early.
    patience: int | None = None
    #: Write a log.jsonl line (and a TensorBoard point) every N steps.
    log_every: int = 100
    #: Write TensorBoard events to tb/ (needs the tensorboard package: pip install tensorboard).
    tensorboard: bool = False
    #: Show tqdm progress bars.
    progress: bool = True
    #: CPU threads for torch's operators in each training process; null: auto, torch's default capped
    #: by the CPUs this process may use, shared among torchrun's processes on the machine. On cores
    #: busy with other work, fewer threads can train several times faster (docs/performance.md).
    threads: int | None = None
    #: Background processes that pad the next training batches and work out their encoder schedules
    #: while the model trains (`spinn.data.batching.nli_batches`); 0: in the training process.
    loader_workers: int = 0


@dataclass
class Config:
    #: nli: sentence pairs (SNLI, MultiNLI, SICK); classify: single sentences (SST, ListOps, TSV).
    task: Task = "nli"
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class _Loader(yaml.SafeLoader):
    """A safe loader that reads ``1e-3`` as a float (YAML 1.2), not as the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, check every value.

    `path` is a file, or the name of a shipped config (see `find_config`).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrong type or an impossible value.
    """
    if path is None:
        cfg = Config()
    else:
        path = find_config(path)
        try:
            with open_input(path, "config file") as f:
                text = f.read().decode("utf-8")
        except SpinnError as err:
            raise ConfigError(str(err)) from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: expected UTF-8 text ({err.reason} at byte {err.start})") from None
        try:
            raw = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
        cfg = config_from_dict({} if raw is None else raw, str(path))
    cfg = apply_overrides(cfg, overrides)
    try:
        validate(cfg)
    except ConfigError as err:
        source = "defaults" if path is None else str(path)
        raise ConfigError(f"{source}{' with --set overrides' if overrides else ''}: {err}") from None
    return cfg


def config_from_dict(raw: Any, where: str) -> Config:
    """Build a `Config` from nested plain data (a parsed YAML file or a checkpoint's copy).

    Raises:
        ConfigError: naming `where` and the dotted key.
    """
    return _build(Config, raw, where, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain data (str, int, float, bool, None), as YAML and checkpoints store it."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), what="the config")


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Return a copy of `cfg` with each ``section.key=value`` applied; the value is read as YAML.

    Raises:
        ConfigError: a malformed override, an unknown key or a value of the wrong type.
    """
    cfg = _copy(cfg)
    for item in overrides:
        where = f"--set {item}"
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        try:
            value = yaml.load(text, Loader=_Loader) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: the value is not valid YAML ({_yaml_problem(err)})") from None
        section_name, dot, name = key.partition(".")
        sections = typing.get_type_hints(Config)
        if section_name not in sections:
            raise ConfigError(f"{where}: {_unknown(section_name, list(sections), '')}")
        if not dataclasses.is_dataclass(sections[section_name]):  # a top-level key such as task
            if dot:
                raise ConfigError(
                    f"{where}: {section_name!r} is a key, not a section; write {section_name}=VALUE"
                )
            setattr(cfg, section_name, _coerce(value, sections[section_name], where, key))
            continue
        if not dot:
            keys = ", ".join(
                f"{section_name}.{f.name}" for f in dataclasses.fields(getattr(cfg, section_name))
            )
            raise ConfigError(f"{where}: {section_name!r} is a section; set one of its keys: {keys}")
        section = getattr(cfg, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if name not in fields:
            raise ConfigError(f"{where}: {_unknown(name, list(fields), section_name + '.')}")
        hints = typing.get_type_hints(type(section))
        setattr(section, name, _coerce(value, hints[name], where, key))
    return cfg


def validate(cfg: Config) -> None:
    """Check values that are well-typed but impossible or incompatible.

    Raises:
        ConfigError: naming the key, what was expected and what was found.
    """
    check_finite(cfg)
    _check_ranges(cfg)
    _check_model(cfg.model, cfg.vocab)
    _check_run(cfg.train, cfg.data)


def _check_ranges(cfg: Config) -> None:
    """Sizes, rates and counts: positive, non-negative, probabilities and factors."""
    m, o, t, d, v = cfg.model, cfg.optim, cfg.train, cfg.data, cfg.vocab
    positive = {
        "model.d_embed": m.d_embed,
        "model.d_hidden": m.d_hidden,
        "model.mlp_layers": m.mlp_layers,
        "model.mlp_dim": m.mlp_dim,
        "vocab.min_freq": v.min_freq,
        "optim.lr": o.lr,
        "optim.lr_decay": o.lr_decay,
        "optim.lr_decay_steps": o.lr_decay_steps,
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.eval_every": t.eval_every,
        "train.log_every": t.log_every,
    }
    optional_positive = {
        "model.d_tracker": m.d_tracker,
        "optim.grad_clip": o.grad_clip,
        "train.epochs": t.epochs,
        "train.max_steps": t.max_steps,
        "train.patience": t.patience,
        "data.limit": d.limit,
        "data.max_length": d.max_length,
        "train.threads": t.threads,
    }
    for key, value in {**positive, **optional_positive}.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: expected a value > 0, found {value}")
    non_negative = {
        "optim.l2": o.l2,
        "model.transition_loss_weight": m.transition_loss_weight,
        "train.loader_workers": t.loader_workers,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: expected a value >= 0, found {value}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout: expected a probability in [0, 1), found {m.dropout}")
    if o.ema_decay is not None and not 0 < o.ema_decay < 1:
        raise ConfigError(f"optim.ema_decay: expected a factor in (0, 1) or null, found {o.ema_decay}")
    if o.lr_decay > 1:
        raise ConfigError(f"optim.lr_decay: expected a factor in (0, 1], found {o.lr_decay}")


def _check_model(m: ModelConfig, v: VocabConfig) -> None:
    """Model options that contradict each other or the vocabulary."""
    if m.variant in VARIANTS_WITH_TRACKER and m.d_tracker is None:
        raise ConfigError(f"model.d_tracker: variant {m.variant!r} needs a Tracker size, found null")
    if m.variant == "spinn_pi_nt" and m.d_tracker is not None:
        raise ConfigError(
            f"model.d_tracker: variant 'spinn_pi_nt' has no Tracker, found d_tracker={m.d_tracker}; "
            "set model.d_tracker=null"
        )
    if m.leaf == "bilstm" and m.composition != "treelstm" and m.d_hidden % 2:
        raise ConfigError(
            f"model.leaf: bilstm splits a {m.composition} leaf of d_hidden {m.d_hidden} between two "
            "directions: use an even model.d_hidden"
        )
    if m.encoder != "spinn" and m.pooling not in POOLINGS[m.encoder]:
        raise ConfigError(
            f"model.pooling: encoder {m.encoder!r} pools by {', '.join(POOLINGS[m.encoder])}; "
            f"found {m.pooling!r}"
        )
    if m.encoder != "spinn" and m.variant == "spinn":
        raise ConfigError(
            f"model.variant: 'spinn' predicts transitions, which encoder {m.encoder!r} cannot; set "
            "model.variant=spinn_pi_nt (ignored by the baselines) or model.encoder=spinn"
        )
    if m.freeze_embeddings and v.glove is None:
        raise ConfigError(
            "model.freeze_embeddings: true with vocab.glove null would train on frozen random vectors; "
            "set vocab.glove or model.freeze_embeddings=false"
        )


def _check_run(t: TrainConfig, d: DataConfig) -> None:
    """Training and data options that cannot run: no stopping point, one class, an unknown device."""
    if t.epochs is None and t.max_steps is None:
        raise ConfigError("train.epochs and train.max_steps are both null: set at least one to stop training")
    if d.num_classes < 2:
        raise ConfigError(f"data.num_classes: expected at least 2 classes, found {d.num_classes}")
    if d.phrases and d.format != "sst":
        raise ConfigError(f"data.phrases: applies to data.format sst (labelled trees), found {d.format!r}")
    if not is_device_name(t.device):
        raise ConfigError(f"train.device: expected {DEVICE_NAMES}, found {t.device!r}")


def check_finite(cfg: Config) -> None:
    """Every number is finite: YAML's ``.nan`` and ``.inf`` pass the range checks below unnoticed
    (``nan <= 0`` is false) and would train to NaN weights.

    Raises:
        ConfigError: naming the first key with a NaN or an infinity.
    """
    for section, values in config_to_dict(cfg).items():
        items = values.items() if isinstance(values, dict) else [(None, values)]  # top-level keys (task)
        for name, value in items:
            if isinstance(value, float) and not math.isfinite(value):
                key = section if name is None else f"{section}.{name}"
                raise ConfigError(f"{key}: expected a finite number, found {value}")


def diff_configs(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ, with (old, new) values."""
    a, b = config_to_dict(old), config_to_dict(new)
    flat = [(s, a[s], b[s]) for s in a if not isinstance(a[s], dict)]  # top-level keys such as task
    nested = [(f"{s}.{k}", a[s][k], b[s][k]) for s in a if isinstance(a[s], dict) for k in a[s]]
    return [(key, x, y) for key, x, y in flat + nested if x != y]


def _copy(cfg: Config) -> Config:
    return config_from_dict(config_to_dict(cfg), "<copy>")


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        what = f"section {prefix.rstrip('.')!r}" if prefix else "the top level"
        raise ConfigError(f"{where}: {what} must be a mapping of keys to values, found {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{where}: {_unknown(str(key), list(fields), prefix)}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, where, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, where, prefix + name)
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check `value` against `hint` (int, float, bool, str, Literal, X | None); ints pass as floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where, key)
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), list(map(str, args)), n=1)
        expected = f"one of {', '.join(map(str, args))}" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (bool, str) and isinstance(value, hint):
        return value
    else:
        expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]
    if value is None:
        expected += " (null is not allowed here)"
    raise ConfigError(f"{where}: key {key!r}: expected {expected}, found {_show(value)}")


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The problem and where it is, on one line (PyYAML's own message spans several)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return problem if mark is None else f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _unknown(key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    listing = ", ".join(prefix + v for v in valid)
    return f"unknown key {prefix + key!r}{hint}; valid keys: {listing}"


def _show(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def class_names(cfg: Config) -> tuple[str, ...]:
    """The names of the classes the config's task predicts, in class-id order."""
    if cfg.task == "nli":
        return LABELS
    d = cfg.data
    return label_names(d.format, d.sst_labels, d.num_classes)


def build_model(cfg: Config, vocab_size: int, embeddings: torch.Tensor | None = None) -> NLIClassifier:
    """The one place a config becomes a model: `NLIClassifier` with the ``model`` section's arguments.

    Args:
        vocab_size: rows of the embedding table.
        embeddings: (vocab_size, model.d_embed) initial word vectors (GloVe rows), or None for random.
    """
    m = cfg.model
    return NLIClassifier(
        vocab_size,
        d_embed=m.d_embed,
        d_hidden=m.d_hidden,
        d_tracker=m.d_tracker,
        variant=m.variant,
        composition=m.composition,
        leaf=m.leaf,
        mlp_layers=m.mlp_layers,
        mlp_dim=m.mlp_dim,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
        freeze_embeddings=m.freeze_embeddings,
        embeddings=embeddings,
        transition_loss_weight=m.transition_loss_weight,
        eval_given_transitions=m.eval_given_transitions,
        n_classes=len(class_names(cfg)),
        sentence_pairs=cfg.task == "nli",
        encoder=m.encoder,
        pooling=m.pooling,
        bidirectional=m.bidirectional,
    )
