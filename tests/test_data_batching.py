import itertools
import random

import pytest
import torch
from torch.utils.data import DataLoader

from spinn.data.batching import BucketBatchSampler, NLIDataset, collate_nli, pad_sentences
from spinn.data.cache import NLITable
from spinn.data.snli import NLIExample
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.transitions import PAD, REDUCE, SHIFT, balanced, left_branching


def example(i, n_premise, n_hypothesis):
    p = [f"p{j}" for j in range(n_premise)]
    h = [f"h{j}" for j in range(n_hypothesis)]
    return NLIExample(f"id{i}", p, left_branching(n_premise), h, balanced(n_hypothesis), i % 3)


EXAMPLES = [example(0, 3, 1), example(1, 1, 4), example(2, 2, 2)]
VOCAB = Vocab.build([ex.premise + ex.hypothesis for ex in EXAMPLES[:2]])


def test_dataset_items_are_word_ids_and_transitions():
    ds = NLIDataset(EXAMPLES, VOCAB)
    assert len(ds) == 3 and ds.lengths.tolist() == [3, 4, 2]
    for ex, item in zip(EXAMPLES, ds, strict=True):
        assert item.premise == VOCAB.encode(ex.premise)
        assert item.premise_transitions == ex.premise_transitions
        assert item.hypothesis == VOCAB.encode(ex.hypothesis)
        assert item.hypothesis_transitions == ex.hypothesis_transitions
        assert (item.label, item.pair_id) == (ex.label, ex.pair_id)


def test_dataset_from_a_table_equals_from_examples():
    table = NLITable.from_examples(EXAMPLES)
    assert list(NLIDataset(table, VOCAB)) == list(NLIDataset(EXAMPLES, VOCAB))


def test_examples_whose_transitions_do_not_fit_their_words_are_rejected():
    bad = NLIExample("bad", ["a", "b"], [SHIFT, SHIFT], ["c"], [SHIFT], 0)
    with pytest.raises(SpinnError, match="example 'bad': premise has 2 words and 2 transitions"):
        NLIDataset([EXAMPLES[0], bad], VOCAB)
    empty = NLIExample("empty", ["a"], [SHIFT], [], [], 0)
    with pytest.raises(SpinnError, match="example 'empty': hypothesis has 0 words"):
        NLIDataset([empty], VOCAB)


def test_collate_follows_the_padding_convention():
    batch = collate_nli(list(NLIDataset(EXAMPLES, VOCAB)))
    p, h = batch.premise, batch.hypothesis
    assert p.tokens.shape == (3, 3) and p.transitions.shape == (3, 5)
    assert p.lengths.tolist() == [3, 1, 2] and h.lengths.tolist() == [1, 4, 2]
    assert p.tokens[1, 1:].tolist() == [0, 0]  # <pad> id
    assert p.transitions[1].tolist() == [SHIFT, PAD, PAD, PAD, PAD]
    assert p.transitions[0].tolist() == [SHIFT, SHIFT, REDUCE, SHIFT, REDUCE]
    assert h.tokens.shape == (3, 4) and h.transitions.shape == (3, 7)
    assert p.tokens.dtype == p.transitions.dtype == batch.labels.dtype == torch.long
    assert batch.labels.tolist() == [0, 1, 2] and batch.pair_ids == ["id0", "id1", "id2"]
    assert len(batch) == 3
    moved = batch.to("cpu")
    assert torch.equal(moved.hypothesis.transitions, h.transitions) and moved.pair_ids == batch.pair_ids


def test_dataloader_with_sampler_and_collate():
    exs = [example(i, 1 + i % 7, 1 + i % 5) for i in range(50)]
    ds = NLIDataset(exs, Vocab.build([e.premise + e.hypothesis for e in exs]))
    loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds.lengths, 8, seed=1), collate_fn=collate_nli)
    ids = [pid for batch in loader for pid in batch.pair_ids]
    assert sorted(ids) == sorted(e.pair_id for e in exs)


LENGTHS = [((i * 7919) % 37) + 1 for i in range(1000)]


def epoch(sampler, e=0):
    sampler.set_epoch(e)
    return list(sampler)


def test_every_example_once_and_batches_of_similar_length():
    s = BucketBatchSampler(LENGTHS, 32, pool_batches=10)
    batches = epoch(s)
    assert len(batches) == len(s) == 32
    assert sorted(itertools.chain(*batches)) == list(range(1000))
    assert sum(len(b) < 32 for b in batches) == 1
    # Sorting pools of 320 examples cuts a batch's spread of lengths from ~33 (random) to ~4.
    spreads = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches]
    assert sum(spreads) / len(spreads) < 6


def test_shuffle_is_deterministic_per_seed_and_epoch():
    a, b = BucketBatchSampler(LENGTHS, 32), BucketBatchSampler(LENGTHS, 32)
    assert epoch(a, 3) == epoch(b, 3)
    assert epoch(a, 3) != epoch(a, 4)
    assert epoch(a, 0) != epoch(BucketBatchSampler(LENGTHS, 32, seed=1), 0)


def test_drop_last_and_no_shuffle():
    s = BucketBatchSampler(LENGTHS, 32, drop_last=True)
    batches = epoch(s)
    assert len(batches) == len(s) == 31 and all(len(b) == 32 for b in batches)
    ordered = list(BucketBatchSampler(LENGTHS, 32, shuffle=False))
    flat = [LENGTHS[i] for i in itertools.chain(*ordered)]
    assert flat == sorted(LENGTHS)


@pytest.mark.parametrize(
    ("n", "bs", "replicas", "drop_last", "exactly_once"),
    [
        (1000, 32, 3, False, True),
        (1000, 32, 3, True, True),
        (100, 10, 4, False, True),
        (64, 8, 2, False, True),
        (5, 4, 4, False, False),  # 5 left-over examples for 4 ranks: short ranks repeat some
        (2, 4, 3, False, False),
    ],
)
def test_ranks_get_disjoint_batches_and_the_same_number_of_steps(n, bs, replicas, drop_last, exactly_once):
    lengths = LENGTHS[:n]
    per_rank = [
        epoch(BucketBatchSampler(lengths, bs, num_replicas=replicas, rank=r, drop_last=drop_last), 2)
        for r in range(replicas)
    ]
    steps = {len(p) for p in per_rank}
    assert steps == {len(BucketBatchSampler(lengths, bs, num_replicas=replicas, drop_last=drop_last))}
    seen = [i for p in per_rank for b in p for i in b]
    assert min(len(b) for p in per_rank for b in p) >= 2  # batch norm trains on no batch of one
    if drop_last:
        assert len(seen) == len(set(seen)) and len(seen) > n - bs * replicas
    elif exactly_once:
        assert sorted(seen) == list(range(n))
    else:  # nothing is lost; the repeats fill final batches to two examples
        assert set(seen) == set(range(n)) and len(seen) - n < 2 * replicas


@pytest.mark.parametrize(("n", "replicas"), [(33, 1), (65, 2), (66, 2), (7, 3), (1, 2)])
def test_no_batch_holds_a_single_example(n, replicas):
    lengths = LENGTHS[:n]
    per_rank = [
        epoch(BucketBatchSampler(lengths, 32, num_replicas=replicas, rank=r)) for r in range(replicas)
    ]
    assert min(len(b) for p in per_rank for b in p) >= 2
    assert {len(p) for p in per_rank} == {len(BucketBatchSampler(lengths, 32, num_replicas=replicas))}
    assert {i for p in per_rank for b in p for i in b} == set(range(n))
    if replicas == 1:  # a lone last example joins the batch before it: 33 = one batch, nothing repeated
        assert [len(b) for b in per_rank[0]] == [33]


def test_resume_yields_exactly_the_remaining_batches():
    s = BucketBatchSampler(LENGTHS, 32, seed=5, num_replicas=2, rank=1)
    s.set_epoch(7)
    full = list(s)
    it = iter(s)
    taken = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state["epoch"] == 7 and state["batches_consumed"] == 5
    resumed = BucketBatchSampler(LENGTHS, 32, seed=5, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(7)  # a trainer re-entering the same epoch keeps the position
    assert taken + list(resumed) == full
    assert list(resumed) == full  # the position applies once; the next pass is a whole epoch
    resumed.load_state_dict(state)
    resumed.set_epoch(8)  # another epoch starts from the beginning
    assert len(list(resumed)) == len(full)


def test_state_from_another_setup_is_rejected():
    state = BucketBatchSampler(LENGTHS, 32).state_dict()
    with pytest.raises(SpinnError, match="'batch_size': saved 32 but this sampler has 16"):
        BucketBatchSampler(LENGTHS, 16).load_state_dict(state)
    with pytest.raises(SpinnError, match="'num_examples'"):
        BucketBatchSampler(LENGTHS[:10], 32).load_state_dict(state)


def test_bad_sampler_arguments():
    with pytest.raises(SpinnError, match="batch_size"):
        BucketBatchSampler(LENGTHS, 0)
    with pytest.raises(SpinnError, match="rank must be in"):
        BucketBatchSampler(LENGTHS, 4, num_replicas=2, rank=2)
    assert list(BucketBatchSampler([], 4)) == [] and len(BucketBatchSampler([], 4)) == 0


def test_pad_sentences_matches_row_by_row_padding_and_names_bad_input():
    rng = random.Random(3)
    ids = [[rng.randrange(1, 50) for _ in range(rng.randint(1, 9))] for _ in range(40)]
    trans = [[rng.choice((SHIFT, REDUCE)) for _ in range(2 * len(w) - 1)] for w in ids]
    s = pad_sentences(ids, trans, pad_id=0)
    n = max(map(len, ids))
    assert s.tokens.shape == (40, n) and s.transitions.shape == (40, 2 * n - 1)
    for i, (w, t) in enumerate(zip(ids, trans, strict=True)):
        assert s.tokens[i].tolist() == w + [0] * (n - len(w))
        assert s.transitions[i].tolist() == [int(x) for x in t] + [int(PAD)] * (2 * n - 1 - len(t))
    assert s.lengths.tolist() == [len(w) for w in ids]
    with pytest.raises(SpinnError, match="2 sentences but 1 transition sequences"):
        pad_sentences([[1], [2]], [[SHIFT]])
    with pytest.raises(SpinnError, match="no sentences to pad"):
        pad_sentences([], [])
    with pytest.raises(SpinnError, match="sentence 1 has no words, expected at least 1"):
        pad_sentences([[1], []], [[SHIFT], []])


def test_pad_sentences_refuses_transitions_that_are_not_2n_minus_1():
    # Fewer than 2 n - 1, also where the batch's widest sentence would leave room for more.
    with pytest.raises(SpinnError, match="sentence 0 has 2 words and 2 transitions, expected 2 n - 1 = 3"):
        pad_sentences([[1, 2], [3, 4, 5]], [[SHIFT, SHIFT], [SHIFT, SHIFT, REDUCE, SHIFT, REDUCE]])
    with pytest.raises(SpinnError, match="sentence 2 has 3 words and 4 transitions, expected 2 n - 1 = 5"):
        pad_sentences([[1], [2], [3, 4, 5]], [[SHIFT], [SHIFT], [SHIFT, SHIFT, REDUCE, SHIFT]])
    with pytest.raises(
        SpinnError, match=r"sentence 1 has 1 words and 5 transitions, expected 2 n - 1 = 1 \("
    ):
        pad_sentences([[1, 2], [3]], [[SHIFT, SHIFT, REDUCE], [SHIFT] * 5])
