"""The data pipeline on the real sample in ../shared/data (skipped where it is absent)."""

import json
from collections import Counter

import pytest
import torch

from spinn.data.batching import BucketBatchSampler, NLIDataset, collate_nli
from spinn.data.cache import load_nli
from spinn.data.glove import load_glove
from spinn.data.snli import LABELS, read_nli
from spinn.data.vocab import Vocab
from spinn.transitions import parse_to_transitions, transitions_to_parse


@pytest.mark.parametrize(
    ("name", "rows", "no_gold"), [("snli_1.0_train_0.01.jsonl", 5502, 4), ("snli_1.0_dev.jsonl", 10000, 158)]
)
def test_snli_row_counts_and_every_parse_converts(data_dir, name, rows, no_gold):
    path = data_dir / "snli_1.0" / name
    data = read_nli(path, progress=False)
    assert (len(data.examples) + data.no_gold, data.no_gold, data.invalid) == (rows, no_gold, 0)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(raw) == rows
    for r in raw:  # '-' rows too: every parse in the file converts and rebuilds the same text
        for field in ("sentence1_binary_parse", "sentence2_binary_parse"):
            assert transitions_to_parse(*parse_to_transitions(r[field])) == " ".join(r[field].split())


def test_dev_label_counts_match_the_published_ones(data_dir):
    data = read_nli(data_dir / "snli_1.0" / "snli_1.0_dev.jsonl", progress=False)
    counts = Counter(LABELS[ex.label] for ex in data.examples)
    assert counts == {"entailment": 3329, "contradiction": 3278, "neutral": 3235}


def test_glove_6b_covers_the_lowercased_dev_vocabulary(data_dir, tmp_path):
    table = load_nli(
        data_dir / "snli_1.0" / "snli_1.0_dev.jsonl", lowercase=True, cache_dir=tmp_path, progress=False
    )
    vocab = Vocab.from_counts(table.counts())
    res = load_glove(
        data_dir / "glove" / "glove.6B.50d.subset.txt", vocab, 50, cache_dir=tmp_path, progress=False
    )
    # Measured: 6185 of 6425 words (96.3%); the misses are <pad>, <unk> and rare spellings.
    assert (res.found, res.total) == (6185, 6425)
    assert res.coverage > 0.96
    assert res.vectors[vocab["dog"]].abs().sum() > 0


def test_glove_840b_rows_cover_the_cased_sick_vocabulary(data_dir, tmp_path):
    counts = Counter()
    for split in ("train", "dev", "test"):
        table = load_nli(data_dir / "sick" / f"sick_{split}_binary.jsonl", cache_dir=tmp_path, progress=False)
        counts.update(table.counts())
    vocab = Vocab.from_counts(counts)
    res = load_glove(
        data_dir / "glove" / "glove.840B.300d.sick_vocab.txt", vocab, 300, cache_dir=tmp_path, progress=False
    )
    assert (res.found, res.total) == (2402, 2410)


def test_cached_table_gives_the_same_batches_as_the_examples(data_dir, tmp_path):
    path = data_dir / "snli_1.0" / "snli_1.0_train_0.01.jsonl"
    data = read_nli(path, progress=False)
    vocab = Vocab.build(t for ex in data.examples for t in (ex.premise, ex.hypothesis))
    load_nli(path, cache_dir=tmp_path, progress=False)
    table = load_nli(path, cache_dir=tmp_path, progress=False)
    assert Vocab.from_counts(table.counts()) == vocab
    a, b = NLIDataset(data.examples, vocab), NLIDataset(table, vocab)
    sampler = BucketBatchSampler(a.lengths, 64, seed=3)
    for indices in list(sampler)[:10]:
        x, y = collate_nli([a[i] for i in indices]), collate_nli([b[i] for i in indices])
        assert torch.equal(x.premise.tokens, y.premise.tokens)
        assert torch.equal(x.hypothesis.transitions, y.hypothesis.transitions)
        assert x.pair_ids == y.pair_ids
