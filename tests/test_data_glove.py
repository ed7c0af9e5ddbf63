import gzip
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch
from nli_rows import GLOVE_3D, VOCAB, corrupt_zip_member

import spinn.data.glove as glove
from spinn.data.glove import load_glove
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError

DIM = 3
# The toy files cover few of their vocabularies' words; the warning about that is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:.*vocabulary words.*have a vector:UserWarning")


def vec_line(word, values):
    return word + " " + " ".join(f"{v:g}" for v in values)


def write_glove(path, rows):
    path.write_text("".join(vec_line(w, v) + "\n" for w, v in rows), encoding="utf-8")
    return path


ROWS = [("the", [0.1, 0.2, 0.3]), (",", [1, 2, 3]), ("cat", [-1, -2, -3.5]), ("dog", [4, 5, 6])]


def test_vocabulary_words_get_their_vectors(tmp_path):
    res = load_glove(write_glove(tmp_path / "g.txt", ROWS), VOCAB, DIM, progress=False)
    assert res.vectors.shape == (5, DIM) and res.vectors.dtype == torch.float32
    assert res.vectors[2].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert res.vectors[3].tolist() == pytest.approx([-1, -2, -3.5])
    assert (res.found, res.total) == (2, 5)
    assert res.found_mask.tolist() == [False, False, True, True, False]


def test_missing_words_pad_is_zero_and_the_rest_random_with_the_found_std(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"w{i}", rng.normal(0, 0.5, 50)) for i in range(300)]
    vocab = Vocab(["<pad>", "<unk>"] + [f"w{i}" for i in range(300)] + [f"x{i}" for i in range(2000)])
    res = load_glove(write_glove(tmp_path / "g.txt", rows), vocab, 50, progress=False)
    assert res.found == 300
    assert torch.count_nonzero(res.vectors[0]) == 0
    missing = res.vectors[302:]
    found_std = res.vectors[2:302].std().item()
    assert missing.std().item() == pytest.approx(found_std, rel=0.05)
    assert abs(missing.mean().item()) < 0.01
    again = load_glove(tmp_path / "g.txt", vocab, 50, progress=False, use_cache=False)
    assert torch.equal(again.vectors, res.vectors)
    other_seed = load_glove(tmp_path / "g.txt", vocab, 50, progress=False, use_cache=False, seed=1)
    assert not torch.equal(other_seed.vectors[302:], res.vectors[302:])
    assert torch.equal(other_seed.vectors[2:302], res.vectors[2:302])


def test_words_with_spaces_take_the_last_dim_fields(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text(". . . 1 2 3\nat name@domain.com 4 5 6\nthe 7 8 9\n")
    vocab = Vocab(["<pad>", "<unk>", ". . .", "at name@domain.com", "the"])
    res = load_glove(path, vocab, DIM, progress=False)
    assert res.found == 3
    assert res.vectors[2:].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_a_pad_row_in_the_file_is_ignored(tmp_path):
    rows = [("<pad>", [1, 1, 1]), ("the", [2, 2, 2])]
    res = load_glove(write_glove(tmp_path / "g.txt", rows), VOCAB, DIM, progress=False)
    assert res.found == 1 and res.vectors[0].tolist() == [0, 0, 0]


def test_duplicate_words_keep_the_first(tmp_path):
    path = write_glove(tmp_path / "g.txt", [("the", [1, 1, 1]), ("the", [2, 2, 2])])
    assert load_glove(path, VOCAB, DIM, progress=False).vectors[2].tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("the 1 2", "g.txt:2: 2 values after the word, expected 3"),
        ("the 1 2 3 4", "g.txt:2: 4 values after the word, expected 3"),
        ("dog 1 2 3 4 5", "g.txt:2: 5 values after the word, expected 3"),
        ("the 1 x 3", "g.txt:2: a value is not a number"),
        ("the 1  ", "g.txt:2: 1 values after the word, expected 3"),  # 3 spaces, as a good row has
        ("the nan 2 3", "g.txt:2: a value is not finite"),
        ("the 1 inf 3", "g.txt:2: a value is not finite"),
        ("the\t1\t2\t3", "g.txt:2: a tab in the line, expected values separated by spaces"),
    ],
)
def test_bad_lines_raise_with_the_line_number(tmp_path, line, fragment):
    path = tmp_path / "g.txt"
    path.write_text("cat 1 2 3\n" + line + "\n")
    with pytest.raises(SpinnError, match=fragment):
        load_glove(path, VOCAB, DIM, progress=False)


def test_gzip_and_zip_forms(tmp_path):
    text = "".join(vec_line(w, v) + "\n" for w, v in ROWS)
    with gzip.open(tmp_path / "g.txt.gz", "wt") as f:
        f.write(text)
    with zipfile.ZipFile(tmp_path / "glove.840B.300d.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("glove.840B.300d.txt", text)
    plain = load_glove(write_glove(tmp_path / "g.txt", ROWS), VOCAB, DIM, progress=False)
    for name in ("g.txt.gz", "glove.840B.300d.zip"):
        assert torch.equal(load_glove(tmp_path / name, VOCAB, DIM, progress=False).vectors, plain.vectors)


def test_six_b_zip_is_picked_by_dimension(tmp_path):
    with zipfile.ZipFile(tmp_path / "glove.6B.zip", "w") as zf:
        for d in (2, 3, 4):
            zf.writestr(f"glove.6B.{d}d.txt", f"the {' '.join([str(d)] * d)}\n")
    res = load_glove(tmp_path / "glove.6B.zip", VOCAB, 3, progress=False)
    assert res.vectors[2].tolist() == [3, 3, 3]
    with pytest.raises(SpinnError, match=r"one ending in \.5d\.txt"):
        load_glove(tmp_path / "glove.6B.zip", VOCAB, 5, progress=False)


def test_result_is_cached_per_vocabulary_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    path = write_glove(tmp_path / "g.txt", ROWS)
    first = load_glove(path, VOCAB, DIM, cache_dir=tmp_path / "c", progress=False)
    assert len(list((tmp_path / "c").iterdir())) == 1
    scan = glove._scan

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned although cached")

    monkeypatch.setattr(glove, "_scan", no_scan)
    cached = load_glove(path, VOCAB, DIM, cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(cached.vectors, first.vectors) and cached.found == 2
    monkeypatch.setattr(glove, "_scan", scan)
    other = Vocab(["<pad>", "<unk>", "dog"])
    assert load_glove(path, other, DIM, cache_dir=tmp_path / "c", progress=False).found == 1
    assert len(list((tmp_path / "c").iterdir())) == 2
    write_glove(path, [("the", [9, 9, 9])])
    rebuilt = load_glove(path, VOCAB, DIM, cache_dir=tmp_path / "c", progress=False)
    assert rebuilt.found == 1 and rebuilt.vectors[2].tolist() == [9, 9, 9]


def test_missing_file_and_bad_dim(tmp_path):
    with pytest.raises(SpinnError, match="no such GloVe file"):
        load_glove(tmp_path / "none.txt", VOCAB, DIM, progress=False)
    with pytest.raises(SpinnError, match="dim must be >= 1"):
        load_glove(write_glove(tmp_path / "g.txt", ROWS), VOCAB, 0, progress=False)


def test_the_vocab_and_glove_usage_snippet_runs(data_dir, tmp_path, monkeypatch):
    """The usage the docs show for `Vocab` and `load_glove`, on the real GloVe 50d rows."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPINN_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    sentences = [["a", "dog", "runs"], ["the", "cat", "sleeps"], ["a", "zxqv"]]
    vocab = Vocab.build(sentences, min_freq=1)  # <pad> = 0, <unk> = 1, then words by frequency
    assert vocab.encode(["a", "bird"]) == [2, 1]  # unknown words get <unk>'s id
    result = load_glove(data_dir / "glove" / "glove.6B.50d.subset.txt", vocab, 50, progress=False)
    embed = torch.nn.Embedding.from_pretrained(result.vectors, freeze=True, padding_idx=0)
    vocab.save("vocab.json")
    assert Vocab.load("vocab.json") == vocab
    assert (result.found, result.total) == (6, 9)  # all but <pad>, <unk> and "zxqv"
    assert embed(torch.tensor([0])).abs().sum() == 0 and embed.weight.shape == (9, 50)
    assert [p.parent.name for p in (tmp_path / "xdg" / "spinn").iterdir()] == ["spinn"]


def load_3d(path, **kwargs):
    return load_glove(path, VOCAB, 3, progress=False, use_cache=False, **kwargs)


def test_a_glove_file_of_another_dimension_says_so(tmp_path):
    (tmp_path / "g.txt").write_text("the 1 2 3 4 5\ncat 1 2 3 4 5\n")
    with pytest.raises(
        SpinnError, match=r"g.txt:1: 5 values after the word, expected 3: this file holds 5-d"
    ):
        load_3d(tmp_path / "g.txt")


def test_ragged_line_in_the_middle_names_its_line(tmp_path):
    (tmp_path / "g.txt").write_text("the 1 2 3\ncat 1 2\n")
    with pytest.raises(SpinnError, match=r"g.txt:2: 2 values after the word, expected 3$"):
        load_3d(tmp_path / "g.txt")


@pytest.mark.parametrize("damage", ["truncated gz", "truncated zip", "corrupt zip member", "not gzip"])
def test_truncated_or_corrupt_glove_archives_name_the_file(tmp_path, damage):
    text = GLOVE_3D * 200
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
            corrupt_zip_member(path)
    with pytest.raises(SpinnError, match=rf"{path.name}: cannot read this GloVe file .*truncated or corrupt"):
        load_3d(path)


def test_zero_coverage_is_an_error_and_low_coverage_warns_with_the_figure(tmp_path):
    (tmp_path / "none.txt").write_text("dog 1 2 3\nbird 4 5 6\n")
    with pytest.raises(
        SpinnError, match="none.txt: none of the 5 vocabulary words has a vector; .*lower-case"
    ):
        load_3d(tmp_path / "none.txt")
    (tmp_path / "low.txt").write_text("cat 1 2 3\n")
    with pytest.warns(UserWarning, match=r"low.txt: only 1 of 5 vocabulary words \(20.0%\) have a vector"):
        load_3d(tmp_path / "low.txt")
    # The warning repeats when the result comes from the cache.
    for _ in range(2):
        with pytest.warns(UserWarning, match=r"\(20.0%\)"):
            load_glove(tmp_path / "low.txt", VOCAB, 3, progress=False, cache_dir=tmp_path / "c")
    assert len(os.listdir(tmp_path / "c")) == 1
    (tmp_path / "good.txt").write_text(GLOVE_3D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_3d(tmp_path / "good.txt").found == 3


def test_a_byte_order_mark_before_the_first_glove_word_is_ignored(tmp_path):
    (tmp_path / "g.txt").write_bytes(b"\xef\xbb\xbf" + GLOVE_3D.encode())
    res = load_3d(tmp_path / "g.txt")
    assert res.found == 3 and res.vectors[2].tolist() == pytest.approx([0.1, 0.2, 0.3])
