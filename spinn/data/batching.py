"""Padded batches of sentences in the layout the SPINN encoder consumes.

Padding convention (one batch of B sentences, the longest with N words):

* ``tokens``      (B, N)       long, word ids, right-padded with the vocabulary's ``<pad>`` id (0).
* ``transitions`` (B, 2N - 1)  long, SHIFT/REDUCE, right-padded with ``Transition.PAD``.
* ``lengths``     (B,)         long, the number of words n_i >= 1; sentence i has 2 n_i - 1
                               transitions.
"""

from __future__ import annotations

import functools
import itertools
import signal
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from spinn.data.cache import NLITable
from spinn.data.snli import NLIExample
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError
from spinn.schedule import Schedule, build_schedule
from spinn.transitions import PAD


@dataclass
class Sentences:
    """A padded batch of sentences; see the module docstring for the layout."""

    tokens: torch.Tensor  # (B, N)
    transitions: torch.Tensor  # (B, 2N - 1)
    lengths: torch.Tensor  # (B,)

    def to(self, device: torch.device | str) -> Sentences:
        return Sentences(
            *(t.to(device, non_blocking=True) for t in (self.tokens, self.transitions, self.lengths))
        )


def pad_sentences(
    token_ids: Sequence[Sequence[int]], transitions: Sequence[Sequence[int]], pad_id: int = 0
) -> Sentences:
    """Pad per-sentence word ids and transitions into a `Sentences` batch.

    Args:
        token_ids: the word ids of each sentence (at least one word each).
        transitions: the SHIFT/REDUCE transitions of each sentence: 2 n - 1 for a sentence of n words
            (`spinn.parse_to_transitions` gives them).
        pad_id: the id that pads ``tokens``.

    Returns:
        `Sentences` with tokens (B, N), transitions (B, 2N - 1) padded with PAD, and lengths (B,).

    Raises:
        SpinnError: no sentences, a different number of transition sequences, a sentence without
            words, or one whose transitions are not 2 n - 1 for its n words.
    """
    if len(token_ids) != len(transitions):
        raise SpinnError(f"{len(token_ids)} sentences but {len(transitions)} transition sequences")
    if not token_ids:
        raise SpinnError("no sentences to pad: a batch needs at least one")
    # numpy fills both tables with one boolean-mask write each, row after row: a tensor write per
    # sentence would cost about 16 us a sentence, most of a batch's preparation.
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    steps = np.array([len(ts) for ts in transitions], dtype=np.int64)
    if not lengths.all():
        raise SpinnError(f"sentence {int(lengths.argmin())} has no words, expected at least 1")
    wrong = steps != 2 * lengths - 1
    if wrong.any():
        i = int(wrong.argmax())
        raise SpinnError(
            f"sentence {i} has {lengths[i]} words and {steps[i]} transitions, expected 2 n - 1 = "
            f"{2 * lengths[i] - 1} (n SHIFTs and n - 1 REDUCEs)"
        )
    n = int(lengths.max())
    tokens = np.full((len(token_ids), n), pad_id, dtype=np.int64)
    tokens[np.arange(n) < lengths[:, None]] = list(itertools.chain.from_iterable(token_ids))
    trans = np.full((len(token_ids), 2 * n - 1), int(PAD), dtype=np.int64)
    trans[np.arange(2 * n - 1) < steps[:, None]] = list(itertools.chain.from_iterable(transitions))
    return Sentences(torch.from_numpy(tokens), torch.from_numpy(trans), torch.from_numpy(lengths))


@dataclass
class NLIBatch:
    """A batch of sentence pairs: premises and hypotheses padded separately (see the module docstring)."""

    premise: Sentences
    #: None in a batch of single sentences to classify (they are the premise side).
    hypothesis: Sentences | None
    labels: torch.Tensor  # (B,) long, class ids (spinn.data.snli.LABELS for NLI)
    pair_ids: list[str]
    #: `build_schedule` of `pair_sentences(self)` when the collate step precomputed it (else None).
    schedule: Schedule | None = None

    def to(self, device: torch.device | str) -> NLIBatch:
        return NLIBatch(
            self.premise.to(device),
            None if self.hypothesis is None else self.hypothesis.to(device),
            self.labels.to(device, non_blocking=True),
            self.pair_ids,
            None if self.schedule is None else self.schedule.to(device),
        )

    def __len__(self) -> int:
        return len(self.pair_ids)


class NLIItem(NamedTuple):
    """One numericalised example, as `NLIDataset` returns it and `collate_nli` takes it (a single
    sentence has no hypothesis: None)."""

    premise: list[int]
    premise_transitions: list[int]
    hypothesis: list[int] | None
    hypothesis_transitions: list[int] | None
    label: int
    pair_id: str


class NLIDataset(Dataset):
    """NLI examples as word ids of a vocabulary, stored flat (a few tensors, however many examples).

    Args:
        examples: a list of `spinn.data.snli.NLIExample`, or the `spinn.data.cache.NLITable` that
            `spinn.data.cache.load_nli` returns (the fast path: no per-word Python work).
        vocab: maps words to ids; words it lacks become ``<unk>``.

    Attributes:
        lengths: (N,) long, max(premise words, hypothesis words) of each example, for bucketing.
        pairs: False for single sentences (a table without hypotheses): items then have no hypothesis.
    """

    def __init__(self, examples: Sequence[NLIExample] | NLITable, vocab: Vocab) -> None:
        table = examples if isinstance(examples, NLITable) else NLITable.from_examples(examples)
        to_vocab = np.array(vocab.encode(table.words), dtype=np.int64)
        self._sides = []
        self.pairs = table.hypothesis_ids is not None
        for side in ("premise", "hypothesis") if self.pairs else ("premise",):
            ids = getattr(table, f"{side}_ids").numpy()
            offsets = getattr(table, f"{side}_offsets").numpy()
            self._sides.append((to_vocab[ids], offsets, getattr(table, f"{side}_transitions").numpy()))
        self._labels = table.labels.tolist()
        self.pair_ids = table.pair_ids
        self.lengths = torch.from_numpy(np.max([np.diff(off) for _, off, _ in self._sides], axis=0))

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> NLIItem:
        sides = []
        for ids, off, trans in self._sides:
            a, b = off[i], off[i + 1]
            # Example i's transitions start at 2 * off[i] - i: each earlier example has 2 n - 1 of them.
            sides += [ids[a:b].tolist(), trans[2 * a - i : 2 * b - i - 1].tolist()]
        if not self.pairs:
            sides += [None, None]
        return NLIItem(*sides, self._labels[i], self.pair_ids[i])


def collate_nli(items: Sequence[NLIItem], *, schedule: bool = False) -> NLIBatch:
    """Pad a list of `NLIDataset` items into an `NLIBatch` (use as a DataLoader's ``collate_fn``).

    Args:
        items: the examples of one batch.
        schedule: also work out the encoder's `Schedule` for the batch here (in a DataLoader worker,
            off the training loop's critical path); `NLIClassifier` uses it instead of building its own.

    Raises:
        ParseError: with ``schedule``, transitions that do not build one tree per sentence.
    """
    pairs = items[0].hypothesis is not None
    batch = NLIBatch(
        premise=pad_sentences([it.premise for it in items], [it.premise_transitions for it in items]),
        hypothesis=pad_sentences([it.hypothesis for it in items], [it.hypothesis_transitions for it in items])
        if pairs
        else None,
        labels=torch.tensor([it.label for it in items], dtype=torch.long),
        pair_ids=[it.pair_id for it in items],
    )
    if schedule:
        pairs = pair_sentences(batch)
        batch.schedule = build_schedule(pairs.transitions, pairs.lengths)
    return batch


def nli_batches(dataset: NLIDataset, sampler: Sampler[list[int]], *, workers: int = 0) -> Iterable[NLIBatch]:
    """The sampler's batches of `dataset`, collated with their encoder schedules, pass after pass.

    With ``workers`` > 0 that many background processes prepare the next batches while the model
    trains on this one (padding and `build_schedule` take about 1.7 ms a batch of 32 pairs on one CPU
    core, 8.6 ms at 512: as long as a GPU's training step can be). They run ahead of the batches
    handed out, so the sampler's own count of batches does too: count what you consume and pass it
    to ``BucketBatchSampler.state_dict(batches_consumed=...)``.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate_nli, schedule=True),
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=_leave_signals_to_the_trainer,
        # Its own generator: each pass draws a seed for the workers, which would otherwise come from
        # the global one and shift every dropout mask after it (a resumed run would train differently).
        generator=torch.Generator().manual_seed(0),
    )


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """Ctrl-C and SIGTERM go to a whole process group: a worker they killed would make the DataLoader
    raise in the training process before it could save a checkpoint. The training process stops the
    workers once it has; they also stop when it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def pair_sentences(batch: NLIBatch) -> Sentences:
    """Premises then hypotheses as one `Sentences` batch of 2B, padded to the longer of the two; a
    batch of single sentences is its premise side (B)."""
    a, b = batch.premise, batch.hypothesis
    if b is None:
        return a
    n = max(a.tokens.shape[1], b.tokens.shape[1])

    def widen(s: Sentences) -> tuple[torch.Tensor, torch.Tensor]:
        extra = n - s.tokens.shape[1]
        return (
            torch.nn.functional.pad(s.tokens, (0, extra)),
            torch.nn.functional.pad(s.transitions, (0, 2 * extra), value=int(PAD)),
        )

    (ta, ra), (tb, rb) = widen(a), widen(b)
    return Sentences(torch.cat((ta, tb)), torch.cat((ra, rb)), torch.cat((a.lengths, b.lengths)))


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, reshuffled each epoch; every example once per epoch.

    With ``shuffle``: a permutation drawn from (seed, epoch) is cut into pools of ``pool_batches``
    batches, each pool is sorted by length (stable) and cut into batches, and the batch order is
    shuffled. Without: examples sorted by length, batches in that order (for evaluation). Only the
    last batch can be partial; ``drop_last`` drops it. No batch holds a single example (batch norm
    cannot train on one): a partial batch of one joins the batch before it.

    Sharding over ``num_replicas`` ranks (all ranks draw the same batches for a given (seed, epoch)):
    rank r takes batches r, r + R, r + 2R, ...; every rank gets the same number of steps. Batches left
    over when the count is not a multiple of R are dropped with ``drop_last``; without it their
    examples are dealt out in turn to one final batch per rank, so each example is still seen exactly
    once, except where there are fewer than two left-over examples a rank: the short ranks fill their
    final batch up to two with repeats of left-over examples.

    Resume: ``state_dict()`` records the epoch and the batches this iterator has yielded;
    after ``load_state_dict`` the next iteration yields exactly the remaining batches of that epoch.

    Raises:
        SpinnError: a batch size, replica count or rank out of range; a state from another setup.
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 100,
    ) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise SpinnError(f"batch_size and pool_batches must be >= 1, found {batch_size}, {pool_batches}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise SpinnError(f"rank must be in [0, num_replicas={num_replicas}), found {rank}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.pool_batches = pool_batches
        self.epoch = 0
        self._skip = 0
        self._consumed = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch`; a resume position for another epoch is forgotten."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    @property
    def start(self) -> int:
        """The batch of the epoch the next pass starts at: 0, or the position `load_state_dict` restored."""
        return self._skip

    def __len__(self) -> int:
        """Batches per epoch on this rank (a full epoch, also right after a mid-epoch resume)."""
        n, bs, r = len(self.lengths), self.batch_size, self.num_replicas
        batches = n // bs + (1 if n % bs and not self.drop_last else 0)
        batches -= n % bs == 1 and n > bs and not self.drop_last  # a lone example joins the batch before
        return batches // r + (1 if batches % r and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self._skip = self._skip, 0
        self._consumed = start
        for batch in batches[start:]:
            self._consumed += 1
            yield batch

    def _all_batches(self) -> list[torch.Tensor]:
        """This epoch's batches before sharding, identical on every rank."""
        n = len(self.lengths)
        if n == 0:
            return []
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            pool = self.batch_size * self.pool_batches
            order = torch.cat(
                [idx[torch.argsort(self.lengths[idx], stable=True)] for idx in order.split(pool)]
            )
        else:
            order = torch.argsort(self.lengths, stable=True)
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        elif len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2:] = [torch.cat(batches[-2:])]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        r = self.num_replicas
        full = len(batches) - len(batches) % r
        mine = [b.tolist() for b in batches[self.rank : full : r]]
        if full < len(batches) and not self.drop_last:
            left = torch.cat(batches[full:]).tolist()
            share = left[self.rank :: r]
            share += [left[(self.rank + i) % len(left)] for i in range(len(share), 2)]
            mine.append(share)
        return mine

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, int | bool]:
        """The position in the epoch. Pass `batches_consumed` when a DataLoader with workers has
        prefetched batches the model has not yet seen (the sampler counts what it has handed out)."""
        return {
            "epoch": self.epoch,
            "batches_consumed": self._consumed if batches_consumed is None else batches_consumed,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "num_examples": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Raises: SpinnError when the state was saved by a sampler with other settings or data."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "shuffle", "drop_last", "num_replicas", "rank", "num_examples"):
            if state.get(key) != mine[key]:
                raise SpinnError(
                    f"sampler state key {key!r}: saved {state.get(key)!r} but this sampler has {mine[key]!r}"
                )
        self.epoch = int(state["epoch"])
        self._skip = self._consumed = int(state["batches_consumed"])
