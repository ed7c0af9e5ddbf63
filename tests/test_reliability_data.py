"""Fault injection on the data side: bad NLI rows and files, bad GloVe files, the dataset cache under
corruption and concurrency, crafted pickles, and unsafe or broken downloads (issue 7)."""

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nli_rows import P1, P2, row, write_jsonl

import spinn.data.cache as cache
from spinn.data import download as dl
from spinn.data.cache import load_nli
from spinn.data.glove import load_glove
from spinn.data.snli import read_nli, truncate_transitions
from spinn.data.vocab import Vocab
from spinn.errors import ParseError, SpinnError
from spinn.transitions import REDUCE, SHIFT, transitions_to_parse, validate_transitions

P1_FULL = "(ROOT (S (NP (DT A) (NN dog)) (VP (VBZ runs))))"


def read(path, **kwargs):
    return read_nli(path, progress=False, **kwargs)


# --- NLI files ---------------------------------------------------------------------------------------


def test_full_parse_with_another_leaf_count_names_both_fields(tmp_path):
    ok = row(sentence1_parse=P1_FULL)
    short = row(sentence1_parse="(ROOT (S (NP (NN dog)) (VP (VBZ runs))))")
    path = write_jsonl(tmp_path / "a.jsonl", [ok, short])
    with pytest.raises(ParseError) as err:
        read(path)
    assert str(err.value) == (
        f"{path}:2: field 'sentence1_binary_parse': 3 words, but field 'sentence1_parse' of the same row "
        f"has 2 leaves; expected the same tokens in both parses"
    )
    assert len(read(path, skip_invalid=True).examples) == 1
    spaced = row(sentence1_parse=" (ROOT\t(S (NP (DT A)  (NN dog)) (VP (VBZ runs))))\n")
    assert len(read(write_jsonl(tmp_path / "b.jsonl", [spaced])).examples) == 1


def test_leaf_check_holds_on_every_real_snli_row_and_catches_a_damaged_one(data_dir, tmp_path):
    source = data_dir / "snli_1.0" / "snli_1.0_dev.jsonl"
    assert len(read(source).examples) == 9842  # raises if the check rejected any real row
    lines = source.read_bytes().splitlines(keepends=True)[:20]
    damaged = json.loads(lines[6])
    damaged["sentence2_parse"] = damaged["sentence2_parse"].replace("(DT A) ", "", 1)
    assert damaged["sentence2_parse"] != json.loads(lines[6])["sentence2_parse"]
    lines[6] = json.dumps(damaged).encode() + b"\n"
    (tmp_path / "dev.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(ParseError, match=r"dev.jsonl:7: field 'sentence2_binary_parse': \d+ words, but"):
        read(tmp_path / "dev.jsonl")


def test_a_utf8_byte_order_mark_is_accepted_in_both_formats(tmp_path):
    plain = read(write_jsonl(tmp_path / "a.jsonl", [row(), row(pair_id="p2")]))
    bom = read(
        write_jsonl(tmp_path / "b.jsonl", [b"\xef\xbb\xbf" + json.dumps(row()).encode(), row(pair_id="p2")])
    )
    assert bom.examples == plain.examples
    header = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tpairID"
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + f"{header}\nentailment\t{P1}\t{P2}\tp1\n".encode())
    assert read(tmp_path / "a.txt").examples == plain.examples[:1]


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_invalid_utf8_names_line_byte_and_offset(tmp_path, suffix):
    bad = json.dumps(row(s1="( caf\udce9 x )"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    if suffix == ".txt":
        lines = [b"gold_label\tsentence1_binary_parse\tsentence2_binary_parse", b"neutral\t( caf\xe9 x )\tb"]
    else:
        lines = [json.dumps(row()).encode(), bad]
    path = tmp_path / f"a{suffix}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SpinnError, match=rf"a{suffix}:2: expected UTF-8 text, found byte 0xe9 at byte \d+"):
        read(path)
    assert read(path, skip_invalid=True).invalid == 1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", b""),
        ("blank.jsonl", b"\n  \n"),
        ("h.txt", b"gold_label\tsentence1_binary_parse\tsentence2_binary_parse\n"),
    ],
)
def test_an_empty_file_is_an_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SpinnError, match=f"{name}: empty file, expected one sentence pair per line"):
        read(tmp_path / name)


def test_a_split_with_no_usable_rows_is_refused_where_a_split_is_needed(tmp_path):
    # Imported here: the training modules are not needed by the rest of this file.
    from spinn.config import DataConfig
    from spinn.evaluate import read_table

    path = write_jsonl(tmp_path / "a.jsonl", [row("-"), row("maybe"), b"{bad"])
    data = read(path, skip_invalid=True)
    assert (len(data.examples), data.no_gold, data.invalid) == (0, 1, 2)
    with pytest.raises(
        SpinnError, match="a.jsonl: no usable sentence pairs, expected at least one; found 1 row"
    ):
        read_table(path, DataConfig(skip_invalid=True, cache_dir=str(tmp_path / "c")), progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_truncated_or_corrupt_gz_names_the_file(tmp_path, damage):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"".join(json.dumps(row(pair_id=f"p{i}")).encode() + b"\n" for i in range(500)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not gzip data at all\n")
    with pytest.raises(SpinnError, match=r"a.jsonl.gz: cannot read past line \d+ .*is it truncated"):
        read(path)


# --- sentence length policy --------------------------------------------------------------------------

LONG = "( ( ( a b ) ( c d ) ) ( e f ) )"  # six words


def test_too_long_error_names_line_field_and_both_lengths(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(), row(s2=LONG, pair_id="p2")])
    with pytest.raises(SpinnError) as err:
        read(path, max_length=4)
    assert f"{path}:2: field 'sentence2_binary_parse': 6 words, more than max_length=4" in str(err.value)
    with pytest.raises(SpinnError, match="max_length must be >= 1"):
        read(path, max_length=0)
    with pytest.raises(SpinnError, match="too_long must be one of error, skip, truncate; found 'cut'"):
        read(path, max_length=4, too_long="cut")


def test_too_long_skip_counts_and_truncate_keeps_valid_trees(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [row(), row(s1=LONG, pair_id="p2"), row(s2=LONG, pair_id="p3")])
    skipped = read(path, max_length=4, too_long="skip")
    assert [e.pair_id for e in skipped.examples] == ["p1"] and skipped.too_long == 2
    assert "skipped 2 pair(s) with a sentence over 4 words" in capsys.readouterr().err
    cut = read(path, max_length=4, too_long="truncate")
    assert cut.too_long == 2 and cut.examples[0] == skipped.examples[0]
    assert cut.examples[1].premise == ["a", "b", "c", "d"]
    assert transitions_to_parse(cut.examples[1].premise, cut.examples[1].premise_transitions) == (
        "( ( a b ) ( c d ) )"
    )
    assert cut.examples[2].hypothesis == ["a", "b", "c", "d"] and cut.examples[2].premise == [
        "A",
        "dog",
        "runs",
    ]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_truncation_keeps_every_whole_constituent_and_builds_one_tree(data):
    n = data.draw(st.integers(1, 30))
    # A random valid sequence: SHIFT while words remain, REDUCE where the stack allows, chosen at random.
    seq, depth, shifts = [], 0, 0
    while shifts < n or depth > 1:
        can_shift, can_reduce = shifts < n, depth >= 2
        if can_shift and (not can_reduce or data.draw(st.booleans())):
            seq, depth, shifts = [*seq, SHIFT], depth + 1, shifts + 1
        else:
            seq, depth = [*seq, REDUCE], depth - 1
    k = data.draw(st.integers(1, 35))
    cut = truncate_transitions(seq, k)
    validate_transitions(cut, min(n, k))
    if k >= n:
        assert cut == seq
    else:
        # The prefix up to the (k+1)-th SHIFT survives intact; only REDUCEs are added after it.
        prefix = seq[: [i for i, t in enumerate(seq) if t == SHIFT][k]]
        assert cut[: len(prefix)] == prefix and set(cut[len(prefix) :]) <= {REDUCE}


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


# --- GloVe -------------------------------------------------------------------------------------------

VOCAB = Vocab(["<pad>", "<unk>", "the", "cat", "zebra"])
GLOVE = "the 0.1 0.2 0.3\ncat 1 2 3\ndog 4 5 6\nzebra 7 8 9\n"


def glove(path, **kwargs):
    return load_glove(path, VOCAB, 3, progress=False, use_cache=False, **kwargs)


def test_a_glove_file_of_another_dimension_says_so(tmp_path):
    (tmp_path / "g.txt").write_text("the 1 2 3 4 5\ncat 1 2 3 4 5\n")
    with pytest.raises(
        SpinnError, match=r"g.txt:1: 5 values after the word, expected 3: this file holds 5-d"
    ):
        glove(tmp_path / "g.txt")


def test_ragged_line_in_the_middle_names_its_line(tmp_path):
    (tmp_path / "g.txt").write_text("the 1 2 3\ncat 1 2\n")
    with pytest.raises(SpinnError, match=r"g.txt:2: 2 values after the word, expected 3$"):
        glove(tmp_path / "g.txt")


def _corrupt_zip_member(path):
    data = bytearray(path.read_bytes())
    start = data.index(b"glove.txt") + len("glove.txt")  # compressed data follows the local header name
    for i in range(start + 5, start + 25):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated gz", "truncated zip", "corrupt zip member", "not gzip"])
def test_truncated_or_corrupt_glove_archives_name_the_file(tmp_path, damage):
    text = GLOVE * 200
    if "gz" in damage:
        path = tmp_path / "g.txt.gz"
        path.write_bytes(gzip.compress(text.encode()) if damage == "truncated gz" else b"plain text\n")
        if damage == "truncated gz":
            path.write_bytes(path.read_bytes()[:-40])
    else:
        path = tmp_path / "g.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("glove.txt", text)
        if damage == "truncated zip":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            _corrupt_zip_member(path)
    with pytest.raises(SpinnError, match=rf"{path.name}: cannot read this GloVe file .*truncated or corrupt"):
        glove(path)


def test_zero_coverage_is_an_error_and_low_coverage_warns_with_the_figure(tmp_path):
    (tmp_path / "none.txt").write_text("dog 1 2 3\nbird 4 5 6\n")
    with pytest.raises(
        SpinnError, match="none.txt: none of the 5 vocabulary words has a vector; .*lower-case"
    ):
        glove(tmp_path / "none.txt")
    (tmp_path / "low.txt").write_text("cat 1 2 3\n")
    with pytest.warns(UserWarning, match=r"low.txt: only 1 of 5 vocabulary words \(20.0%\) have a vector"):
        glove(tmp_path / "low.txt")
    # The warning repeats when the result comes from the cache.
    for _ in range(2):
        with pytest.warns(UserWarning, match=r"\(20.0%\)"):
            load_glove(tmp_path / "low.txt", VOCAB, 3, progress=False, cache_dir=tmp_path / "c")
    assert len(os.listdir(tmp_path / "c")) == 1
    (tmp_path / "good.txt").write_text(GLOVE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert glove(tmp_path / "good.txt").found == 3


def test_a_byte_order_mark_before_the_first_glove_word_is_ignored(tmp_path):
    (tmp_path / "g.txt").write_bytes(b"\xef\xbb\xbf" + GLOVE.encode())
    res = glove(tmp_path / "g.txt")
    assert res.found == 3 and res.vectors[2].tolist() == pytest.approx([0.1, 0.2, 0.3])


# --- the dataset cache -------------------------------------------------------------------------------


class _WritesAFile:
    """Unpickling this runs ``exec``, which writes the file named in `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_crafted_cache_pickle_is_refused_and_rebuilt(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [row(), row("neutral", pair_id="p2")])
    marker = tmp_path / "pwned.txt"
    evil = {"key": "x", "payload": _WritesAFile(marker)}
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
        (tmp_path / "g.txt").write_text(GLOVE)
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


# --- downloads -----------------------------------------------------------------------------------------


def test_a_member_through_a_symlinked_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "snli_1.0").symlink_to(outside)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("snli_1.0/dev.jsonl", b"x")
    with pytest.raises(SpinnError, match="would be written outside"):
        dl.extract(tmp_path / "a.zip", root)
    assert list(outside.iterdir()) == []


def test_a_corrupt_archive_member_is_an_error_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "g.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("glove.txt", GLOVE * 200)
    _corrupt_zip_member(path)
    (tmp_path / "root").mkdir()
    with pytest.raises(SpinnError, match=r"g.zip: member 'glove.txt' is truncated or corrupt"):
        dl.extract(path, tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []
    (tmp_path / "half.zip").write_bytes(path.read_bytes()[:100])
    with pytest.raises(SpinnError, match="half.zip: not a zip archive"):
        dl.extract(tmp_path / "half.zip", tmp_path / "root")


def test_a_download_cut_short_is_an_error_and_leaves_nothing(tmp_path):
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 100)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/snli_1.0.zip"
    try:
        with pytest.raises(SpinnError, match="download failed"):
            dl.download("snli", tmp_path, url=url, progress=False)
    finally:
        thread.join(5)
        httpd.server_close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
