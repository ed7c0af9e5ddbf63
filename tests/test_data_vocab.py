import json

import pytest

from spinn.data.vocab import PAD, PAD_ID, UNK, UNK_ID, Vocab
from spinn.errors import SpinnError

SENTS = [["the", "cat", "sat"], ["the", "dog", "sat"], ["a", "cat"]]


def test_build_orders_by_frequency_then_alphabet():
    v = Vocab.build(SENTS)
    assert v.itos == [PAD, UNK, "cat", "sat", "the", "a", "dog"]
    assert (v[PAD], v[UNK]) == (PAD_ID, UNK_ID) == (0, 1)
    assert len(v) == 7


def test_min_freq_drops_rare_words_and_unknown_maps_to_unk():
    v = Vocab.build(SENTS, min_freq=2)
    assert v.itos == [PAD, UNK, "cat", "sat", "the"]
    assert v.encode(["the", "dog", "zebra"]) == [4, UNK_ID, UNK_ID]
    assert "dog" not in v and "cat" in v
    with pytest.raises(SpinnError, match="min_freq must be >= 1"):
        Vocab.build(SENTS, min_freq=0)


def test_specials_in_the_data_are_not_duplicated():
    assert Vocab.build([[PAD, "x", UNK]]).itos == [PAD, UNK, "x"]


def test_save_load_round_trip_is_plain_json(tmp_path):
    v = Vocab.build(SENTS + [["café", "naïve"]])
    v.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == {"itos": v.itos}
    assert Vocab.load(tmp_path / "vocab.json") == v
    assert Vocab.from_dict(v.to_dict()) == v


def test_content_hash_tracks_the_word_list():
    assert Vocab.build(SENTS).content_hash() == Vocab.build(SENTS).content_hash()
    assert Vocab.build(SENTS).content_hash() != Vocab.build(SENTS, min_freq=2).content_hash()


def test_bad_vocabularies_are_rejected(tmp_path):
    with pytest.raises(SpinnError, match="starts with '<pad>', '<unk>'"):
        Vocab(["a", "b"])
    with pytest.raises(SpinnError, match="'a' appears twice"):
        Vocab([PAD, UNK, "a", "a"])
    with pytest.raises(SpinnError, match="key 'itos'"):
        Vocab.from_dict({"words": []})
    with pytest.raises(SpinnError, match="no such vocabulary file"):
        Vocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpinnError, match="bad.json: not a JSON vocabulary"):
        Vocab.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SpinnError, match="list.json: a vocabulary is a mapping"):
        Vocab.load(tmp_path / "list.json")
