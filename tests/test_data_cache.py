import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from nli_rows import GLOVE_3D, LONG, VOCAB, row, write_jsonl
from tiny_runs import WritesAFile

import spinn.data.cache as cache
from spinn.config import DataConfig
from spinn.data.cache import NLITable, load_nli
from spinn.data.glove import load_glove
from spinn.data.snli import read_nli
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.evaluate import read_table

ROWS = [
    {
        "gold_label": "entailment",
        "sentence1_binary_parse": "( ( A dog ) runs )",
        "sentence2_binary_parse": "( The ( dog moves ) )",
        "pairID": "p1",
    },
    {"gold_label": "-", "sentence1_binary_parse": "a", "sentence2_binary_parse": "b", "pairID": "p2"},
    {
        "gold_label": "neutral",
        "sentence1_binary_parse": "Dogs",
        "sentence2_binary_parse": "( A ( cat . ) )",
        "pairID": "p3",
        "genre": "fiction",
    },
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "d.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _no_reading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("read_nli called although the cache is fresh")

    monkeypatch.setattr(cache, "read_nli", fail)


def test_table_columns_match_the_examples(source):
    data = read_nli(source, progress=False)
    t = NLITable.from_examples(data.examples, no_gold=data.no_gold)
    assert len(t) == 2 and t.no_gold == 1 and t.pair_ids == ["p1", "p3"]
    assert t.words == ["A", "dog", "runs", "Dogs", "The", "moves", "cat", "."]
    assert t.counts()["dog"] == 2
    assert t.premise_offsets.tolist() == [0, 3, 4] and t.hypothesis_offsets.tolist() == [0, 3, 6]
    assert t.premise_transitions.tolist() == [0, 0, 1, 0, 1, 0]
    assert t.labels.tolist() == [0, 1] and t.genres == [None, "fiction"]


def test_second_load_comes_from_the_cache(source, tmp_path, monkeypatch):
    first = load_nli(source, cache_dir=tmp_path / "c", progress=False)
    files = os.listdir(tmp_path / "c")
    assert files == [cache.cache_path(source, "nli", tmp_path / "c").name]
    assert files[0].startswith("d.jsonl.") and files[0].endswith(".nli.pt")
    # Plain tensors and containers: loadable without unpickling arbitrary objects.
    torch.load(tmp_path / "c" / files[0], weights_only=True)
    _no_reading(monkeypatch)
    second = load_nli(source, cache_dir=tmp_path / "c", progress=False)
    assert second.pair_ids == first.pair_ids and second.words == first.words
    assert torch.equal(second.hypothesis_transitions, first.hypothesis_transitions)


@pytest.mark.filterwarnings("ignore:.*vocabulary words.*have a vector")
def test_the_default_cache_goes_to_the_user_cache_folder_never_beside_the_data(source, tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    glove = source.parent / "g.txt"
    glove.write_text("dog 1 2 3\nruns 4 5 6\n")
    vocab = Vocab.build([["dog", "runs", "far"]])
    first = load_glove(glove, vocab, 3, progress=False)
    load_nli(source, progress=False)
    assert sorted(p.name for p in source.parent.iterdir()) == ["d.jsonl", "g.txt"]
    cached = sorted(p.name for p in (tmp_path / "xdg" / "spinn").iterdir())
    assert [n.split(".")[0] for n in cached] == ["d", "g"] and all(n.endswith(".pt") for n in cached)
    _no_reading(monkeypatch)
    assert len(load_nli(source, progress=False)) == 2
    assert torch.equal(load_glove(glove, vocab, 3, progress=False, seed=0).vectors, first.vectors)


def test_the_cache_folder_is_the_argument_then_spinn_cache_dir_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "spinn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says to ignore it
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "spinn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "spinn"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, "")  # empty counts as unset
    assert cache.default_cache_dir() == tmp_path / "xdg" / "spinn"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert cache.default_cache_dir() == tmp_path / "mine"
    source = tmp_path / "d.jsonl"
    assert cache.cache_path(source, "nli", None).parent == tmp_path / "mine"
    assert cache.cache_path(source, "nli", tmp_path / "arg").parent == tmp_path / "arg"
    # The config's data.cache_dir is the argument.
    source.write_text(json.dumps(ROWS[0]) + "\n")
    read_table(source, DataConfig(cache_dir=str(tmp_path / "cfg")), progress=False)
    assert [p.parent for p in (tmp_path / "cfg").iterdir()] == [tmp_path / "cfg"]
    assert not (tmp_path / "mine").exists()


def test_files_of_the_same_name_in_two_folders_keep_their_own_caches(source, tmp_path, monkeypatch):
    other = tmp_path / "other" / "d.jsonl"
    other.parent.mkdir()
    other.write_text(json.dumps(ROWS[0]) + "\n")
    for path in (source, other, source, other):
        load_nli(path, cache_dir=tmp_path / "c", progress=False)
    assert len(os.listdir(tmp_path / "c")) == 2
    _no_reading(monkeypatch)
    assert load_nli(source, cache_dir=tmp_path / "c", progress=False).pair_ids == ["p1", "p3"]
    assert load_nli(other, cache_dir=tmp_path / "c", progress=False).pair_ids == ["p1"]


def test_options_get_their_own_cache(source, tmp_path):
    lower = load_nli(source, lowercase=True, cache_dir=tmp_path, progress=False)
    cased = load_nli(source, cache_dir=tmp_path, progress=False)
    assert "a" in lower.words and "A" in cased.words


def test_a_changed_source_rebuilds_the_cache(source, tmp_path):
    load_nli(source, cache_dir=tmp_path, progress=False)
    source.write_text(json.dumps(ROWS[0]) + "\n")
    os.utime(source, ns=(1, 1))
    assert load_nli(source, cache_dir=tmp_path, progress=False).pair_ids == ["p1"]


def test_a_corrupt_cache_is_rebuilt_with_a_warning(source, tmp_path):
    cache.cache_path(source, "nli", tmp_path).write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert len(load_nli(source, cache_dir=tmp_path, progress=False)) == 2
    assert len(load_nli(source, cache_dir=tmp_path, progress=False)) == 2
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_an_unwritable_cache_folder_only_warns(source, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cannot write the cache"):
        assert len(load_nli(source, cache_dir=blocker / "sub", progress=False)) == 2


@pytest.mark.filterwarnings("ignore:.*vocabulary words.*have a vector")
def test_a_read_only_cache_folder_gets_no_cache_even_from_root(source, tmp_path, monkeypatch):
    folder = tmp_path / "shared-cache"
    folder.mkdir()
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(folder))
    glove = source.parent / "g.txt"
    glove.write_text("dog 1 2 3\n")
    folder.chmod(0o555)  # root's writes would succeed: the permission bits are what says no
    try:
        with pytest.warns(UserWarning, match="shared-cache: read-only folder; continuing without a cache"):
            assert len(load_nli(source, progress=False)) == 2
        with pytest.warns(UserWarning, match="shared-cache: read-only folder"):
            assert load_glove(glove, Vocab.build([["dog"]]), 3, progress=False).found == 1
        assert list(folder.iterdir()) == []
        assert sorted(p.name for p in source.parent.iterdir()) == ["d.jsonl", "g.txt"]
    finally:
        folder.chmod(0o755)


def test_a_cache_folder_that_cannot_be_made_only_warns(source, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(blocker / "spinn"))
    with pytest.warns(UserWarning, match="cannot write the cache"):
        assert len(load_nli(source, progress=False)) == 2
    assert sorted(p.name for p in source.parent.iterdir()) == ["d.jsonl"]


def test_a_file_without_gold_rows_caches_an_empty_table(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(ROWS[1]) + "\n")
    load_nli(path, cache_dir=tmp_path, progress=False)
    table = load_nli(path, cache_dir=tmp_path, progress=False)
    assert (len(table), table.no_gold, table.words, table.premise_offsets.tolist()) == (0, 1, [], [0])


def _decoded(table):
    """The table with word ids replaced by words: equal for equal content, whatever the word order."""
    out = {k: v for k, v in table.__dict__.items() if k not in ("words", "word_counts")}
    for side in ("premise_ids", "hypothesis_ids"):
        out[side] = [table.words[i] for i in out[side].tolist()]
    out["counts"] = table.counts()
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def test_parallel_reading_gives_the_serial_table(tmp_path, monkeypatch):
    rows = [
        {
            **ROWS[i % 3],
            "sentence2_binary_parse": f"( w{i} x{i % 7} )",
            "pairID": f"r{i}",
            "genre": "g" if i % 5 == 0 else None,
        }
        for i in range(50)
    ]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(cache, "PARALLEL_MIN_BYTES", 0)
    serial = _decoded(load_nli(path, use_cache=False, progress=False))
    assert len(serial["pair_ids"]) == 33 and serial["no_gold"] == 17
    for workers in (2, 3, 7):
        assert _decoded(load_nli(path, use_cache=False, workers=workers)) == serial
    # A part without a labelled row (rows 15-34 unlabelled) contributes nothing and breaks nothing.
    for i in range(15, 35):
        rows[i]["gold_label"] = "-"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    serial = _decoded(load_nli(path, use_cache=False, progress=False))
    assert len(serial["pair_ids"]) == 20
    for workers in (3, 60):
        assert _decoded(load_nli(path, use_cache=False, workers=workers)) == serial


def test_parallel_reading_reports_the_true_line(tmp_path, monkeypatch):
    rows = [json.dumps(ROWS[0])] * 40 + ['{"bad json'] + [json.dumps(ROWS[0])] * 5
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(cache, "PARALLEL_MIN_BYTES", 0)
    with pytest.raises(SpinnError, match="big.jsonl:41: bad JSON"):
        load_nli(path, use_cache=False, workers=3)


def test_length_policy_is_part_of_the_cache_key_and_of_the_table(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", [row(), row(s1=LONG, pair_id="p2")] * 30)
    whole = load_nli(path, cache_dir=tmp_path / "c", progress=False)
    skip = load_nli(path, cache_dir=tmp_path / "c", progress=False, max_length=4, too_long="skip")
    cut = load_nli(path, cache_dir=tmp_path / "c", progress=False, max_length=4, too_long="truncate")
    assert (len(whole), len(skip), len(cut)) == (60, 30, 60)
    assert (whole.too_long, skip.too_long, cut.too_long) == (0, 30, 30)
    assert len(os.listdir(tmp_path / "c")) == 3
    assert (
        load_nli(path, cache_dir=tmp_path / "c", progress=False, max_length=4, too_long="skip").too_long == 30
    )
    monkeypatch.setattr(cache, "PARALLEL_MIN_BYTES", 0)
    parallel = load_nli(path, use_cache=False, workers=3, max_length=4, too_long="truncate")
    assert parallel.too_long == 30 and torch.equal(parallel.premise_transitions, cut.premise_transitions)


def test_a_crafted_cache_pickle_is_refused_and_rebuilt(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [row(), row("neutral", pair_id="p2")])
    marker = tmp_path / "pwned.txt"
    evil = {"key": "x", "payload": WritesAFile(marker)}
    torch.save(evil, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the file is live: a plain load runs it
    assert marker.read_text() == "pwned"
    marker.unlink()
    for target, load in [
        (
            cache.cache_path(source, "nli", tmp_path / "c"),
            lambda: len(load_nli(source, cache_dir=tmp_path / "c", progress=False)),
        ),
        (
            cache.cache_path(tmp_path / "g.txt", f"3d.{VOCAB.content_hash()[:16]}", tmp_path / "c"),
            lambda: load_glove(tmp_path / "g.txt", VOCAB, 3, progress=False, cache_dir=tmp_path / "c").found,
        ),
    ]:
        (tmp_path / "g.txt").write_text(GLOVE_3D)
        target.parent.mkdir(exist_ok=True)
        torch.save(evil, target)
        with pytest.warns(UserWarning, match="unreadable cache"):
            assert load() in (2, 3)
        assert not marker.exists()
        torch.load(target, weights_only=True)  # rebuilt as plain data


def test_a_cache_under_the_right_key_without_payload_is_rebuilt(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [row()])
    load_nli(source, cache_dir=tmp_path, progress=False)
    target = cache.cache_path(source, "nli", tmp_path)
    obj = torch.load(target, weights_only=True)
    torch.save({"key": obj["key"], "payload": [1, 2]}, target)
    with pytest.warns(UserWarning, match="cache without a payload"):
        assert load_nli(source, cache_dir=tmp_path, progress=False).pair_ids == ["p1"]


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "a.jsonl", [row()])

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.torch, "save", full_disk)
    with pytest.warns(UserWarning, match="cannot write the cache .*No space left"):
        assert len(load_nli(source, cache_dir=tmp_path / "c", progress=False)) == 1
    assert not (tmp_path / "c").exists()  # no partial file, nor the folder made for it


_BUILDER = """
import sys, time
from pathlib import Path
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
from spinn.data.cache import load_nli
t = load_nli(sys.argv[1], cache_dir=sys.argv[2], progress=False)
print(len(t), t.pair_ids[-1], int(t.premise_ids.sum()), flush=True)
"""


@pytest.mark.slow
def test_processes_building_one_cache_at_once_do_not_corrupt_it(tmp_path):
    rows = [row(pair_id=f"p{i}", s2=f"( w{i} ( x{i % 13} y ) )") for i in range(4000)]
    source = write_jsonl(tmp_path / "a.jsonl", rows[:10])
    load_nli(source, cache_dir=tmp_path / "c", progress=False)
    write_jsonl(source, rows)  # the cache is now stale: every process reads it, then rebuilds it
    expected = load_nli(source, use_cache=False, progress=False)
    line = f"{len(expected)} {expected.pair_ids[-1]} {int(expected.premise_ids.sum())}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(source), str(tmp_path / "c"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    go.touch()  # all start reading and writing at the same moment
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "unreadable cache" not in err, err
        assert out.strip() == line
    assert os.listdir(tmp_path / "c") == [cache.cache_path(source, "nli", tmp_path / "c").name]
    assert load_nli(source, cache_dir=tmp_path / "c", progress=False).pair_ids == expected.pair_ids


def test_threads_saving_one_cache_use_distinct_temporary_files(tmp_path):
    target = tmp_path / "x.pt"
    payload = {"t": torch.arange(200_000)}
    threads = [threading.Thread(target=cache.save_cache, args=(target, {"n": 1}, payload)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(cache.load_cache(target, {"n": 1})["t"], payload["t"])
    assert os.listdir(tmp_path) == ["x.pt"]
