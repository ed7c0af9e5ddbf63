"""The classifier: embeddings, one SPINN shared by premise and hypothesis, and an MLP; or, for
single-sentence classification, the MLP over one sentence vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinn.data.batching import NLIBatch, pair_sentences
from spinn.errors import SpinnError
from spinn.model.baselines import CBOW, ENCODERS, LSTMEncoder
from spinn.model.spinn import SPINN, SPINNOutput, transition_loss
from spinn.schedule import Schedule, real_words

#: SPINN-PI-NT (no Tracker), SPINN-PI (Tracker, parsed transitions), full SPINN (Tracker parses).
VARIANTS = ("spinn_pi_nt", "spinn_pi", "spinn")


@dataclass
class ClassifierOutput:
    """What `NLIClassifier.forward` returns.

    Attributes:
        logits: (B, n_classes) class scores (for NLI: entailment, neutral, contradiction).
        transition_loss: scalar, the full SPINN's transition loss over premises and hypotheses already
            multiplied by ``transition_loss_weight``; None for the other variants. Training loss:
            ``cross_entropy(logits, labels) + transition_loss`` (`NLIClassifier.loss`).
        premise, hypothesis: the encoder's output for each side; a single sentence is the premise side
            (hypothesis None).
    """

    logits: Tensor
    transition_loss: Tensor | None
    premise: SPINNOutput
    hypothesis: SPINNOutput | None


class Dropout(nn.Dropout):
    """`nn.Dropout` with a cheaper mask on the CPU, where torch's `bernoulli_` draws a double per
    element and `torch.rand` a float: the mask is ``rand >= p`` (benchmarks/README.md has the
    figures). On other devices (one fused kernel there), for dtypes other than float32, in eval mode,
    in place and at p of 0 or 1 it is `nn.Dropout`.
    """

    def forward(self, x: Tensor) -> Tensor:
        fast = x.device.type == "cpu" and x.dtype == torch.float32 and not self.inplace
        if not (fast and self.training and 0 < self.p < 1):
            return super().forward(x)
        return x * torch.rand_like(x).ge_(self.p).mul_(1 / (1 - self.p))


class NLIClassifier(nn.Module):
    """Bowman et al. (2016)'s NLI model: features [p; h; p - h; p * h] of the two sentence vectors;
    with ``sentence_pairs=False`` a single-sentence classifier whose features are the sentence vector.

    Args:
        vocab_size: rows of the embedding table (id 0 is padding).
        d_embed: size of the word embeddings.
        d_hidden: size of the SPINN node states.
        d_tracker: size of the Tracker (ignored by "spinn_pi_nt").
        variant: one of `VARIANTS`.
        composition: the encoder's composition, a name of `spinn.model.COMPOSITIONS` (see `SPINN`).
        leaf: the encoder's leaf encoder, a name of `spinn.model.LEAVES` (see `SPINN`).
        mlp_layers: hidden layers of the MLP (0 gives a linear classifier on the features).
        mlp_dim: width of each hidden layer.
        dropout: dropout rate on the embeddings and in the MLP.
        batch_norm: batch norm on the MLP input and after each hidden layer.
        freeze_embeddings: keep the embeddings fixed (the paper's setting with GloVe).
        embeddings: (vocab_size, d_embed) initial embeddings, for example GloVe rows; random if None.
        transition_loss_weight: weight of the full SPINN's transition loss.
        eval_given_transitions: in eval mode let the given parses drive the full SPINN's stack
            instead of its predictions.
        n_classes: output classes.
        sentence_pairs: classify pairs (NLI batches); False: single sentences (batches without a
            hypothesis side).
        encoder: one of `spinn.model.baselines.ENCODERS`: "spinn" (the variant above), or a sequential
            baseline that ignores the parses, "cbow" (d_embed-wide sentence vectors) or "lstm"
            (d_hidden-wide, twice that when bidirectional).
        pooling: the baselines' pooling, one of `spinn.model.baselines.POOLINGS` for the encoder.
        bidirectional: "lstm" only: read the sentence in both directions.

    Raises:
        SpinnError: an unknown variant or embeddings of the wrong shape.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        d_embed: int = 300,
        d_hidden: int = 300,
        d_tracker: int = 64,
        variant: str = "spinn_pi",
        composition: str = "treelstm",
        leaf: str = "projection",
        mlp_layers: int = 1,
        mlp_dim: int = 1024,
        dropout: float = 0.1,
        batch_norm: bool = True,
        freeze_embeddings: bool = True,
        embeddings: Tensor | None = None,
        transition_loss_weight: float = 1.0,
        eval_given_transitions: bool = False,
        n_classes: int = 3,
        sentence_pairs: bool = True,
        encoder: str = "spinn",
        pooling: str = "max",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        _check_options(variant, encoder, embeddings, (vocab_size, d_embed))
        self.variant = variant
        self.n_classes = n_classes
        self.sentence_pairs = sentence_pairs
        self.transition_loss_weight = transition_loss_weight
        self.eval_given_transitions = eval_given_transitions
        self.embed = _embedding(vocab_size, d_embed, embeddings, freeze=freeze_embeddings)
        self.embed_dropout = Dropout(dropout)
        self.encoder: SPINN | CBOW | LSTMEncoder
        if encoder == "spinn":
            self.encoder = SPINN(
                d_embed,
                d_hidden,
                d_tracker=None if variant == "spinn_pi_nt" else d_tracker,
                predict_transitions=variant == "spinn",
                composition=composition,
                leaf=leaf,
            )
            d_sentence = d_hidden
        elif encoder == "cbow":
            self.encoder = CBOW(d_embed, pooling)
            d_sentence = self.encoder.d_out
        else:
            self.encoder = LSTMEncoder(d_embed, d_hidden, bidirectional=bidirectional, pooling=pooling)
            d_sentence = self.encoder.d_out
        d_features = (4 if sentence_pairs else 1) * d_sentence
        self.mlp = _mlp(d_features, mlp_layers, mlp_dim, n_classes, dropout=dropout, batch_norm=batch_norm)

    def forward(self, batch: NLIBatch, schedule: Schedule | None = None) -> ClassifierOutput:
        """Classify a batch of pairs.

        Args:
            batch: premises and hypotheses as `Sentences` (labels are not used here).
            schedule: optionally `build_schedule` of ``pair_sentences(batch)``, precomputed; by default
                ``batch.schedule`` (filled by ``collate_nli(..., schedule=True)``), else built here.

        Returns:
            `ClassifierOutput`.

        Raises:
            SpinnError: a batch of pairs for a single-sentence classifier, or the other way round.
        """
        if (batch.hypothesis is not None) != self.sentence_pairs:
            expected = "sentence pairs" if self.sentence_pairs else "single sentences"
            found = "single sentences" if batch.hypothesis is None else "sentence pairs"
            raise SpinnError(f"this classifier takes batches of {expected}, found a batch of {found}")
        pairs = pair_sentences(batch)  # premises then hypotheses, (2B, ...)
        given = self.training or self.eval_given_transitions
        schedule = batch.schedule if schedule is None else schedule
        n_sentences, n_words = pairs.tokens.shape
        if schedule is None:
            real = real_words(pairs.lengths, n_words)[0]
        else:
            schedule.check_fits(n_sentences, n_words)
            real = schedule.leaf_rows
        # Only the real words are embedded and dropped out (packed, as the encoder takes them): padding
        # is about a quarter of a bucketed batch.
        words = self.embed_dropout(self.embed(pairs.tokens.view(-1).index_select(0, real)))  # (W, d_embed)
        both = self.encoder(
            words, pairs.transitions, pairs.lengths, use_given_transitions=given, schedule=schedule
        )
        loss = None if both.transition_loss is None else self.transition_loss_weight * both.transition_loss
        if not self.sentence_pairs:
            return ClassifierOutput(self.mlp(both.h), loss, both, None)
        premise, hypothesis = _split(both, pairs.transitions, len(batch.labels))
        p, h = premise.h, hypothesis.h
        logits = self.mlp(torch.cat((p, h, p - h, p * h), dim=1))
        return ClassifierOutput(logits, loss, premise, hypothesis)

    def loss(self, output: ClassifierOutput, labels: Tensor) -> Tensor:
        """The training loss: cross-entropy of the labels plus the weighted transition loss."""
        loss = F.cross_entropy(output.logits, labels)
        return loss if output.transition_loss is None else loss + output.transition_loss


def _split(both: SPINNOutput, transitions: Tensor, n: int) -> tuple[SPINNOutput, SPINNOutput]:
    def part(rows: slice) -> SPINNOutput:
        logits = None if both.transition_logits is None else both.transition_logits[rows]
        return SPINNOutput(
            h=both.h[rows],
            transition_logits=logits,
            transition_loss=None if logits is None else transition_loss(logits, transitions[rows]),
            predicted_transitions=None
            if both.predicted_transitions is None
            else both.predicted_transitions[rows],
        )

    return part(slice(0, n)), part(slice(n, None))


def _check_options(variant: str, encoder: str, embeddings: Tensor | None, shape: tuple[int, int]) -> None:
    if variant not in VARIANTS:
        raise SpinnError(f"variant {variant!r} is unknown, expected one of {', '.join(VARIANTS)}")
    if encoder not in ENCODERS:
        raise SpinnError(f"encoder {encoder!r} is unknown, expected one of {', '.join(ENCODERS)}")
    if embeddings is not None and tuple(embeddings.shape) != shape:
        raise SpinnError(
            f"embeddings have shape {tuple(embeddings.shape)}, expected {shape} (vocab_size, d_embed)"
        )
    if encoder != "spinn" and variant == "spinn":
        raise SpinnError(f"encoder {encoder!r} cannot predict transitions: variant 'spinn' needs SPINN")


def _embedding(vocab_size: int, d_embed: int, initial: Tensor | None, *, freeze: bool) -> nn.Embedding:
    """The word embeddings (id 0 is padding), from ``initial`` rows where given."""
    embed = nn.Embedding(vocab_size, d_embed, padding_idx=0)
    if initial is not None:
        with torch.no_grad():
            embed.weight.copy_(initial)
    embed.weight.requires_grad_(not freeze)
    return embed


def _mlp(
    d_in: int, layers: int, d_layer: int, n_classes: int, *, dropout: float, batch_norm: bool
) -> nn.Sequential:
    """``layers`` hidden layers of ``d_layer`` units (dropout, linear, ReLU, batch norm), then the
    class scores."""
    modules: list[nn.Module] = [nn.BatchNorm1d(d_in)] if batch_norm else []
    for _ in range(layers):
        modules += [Dropout(dropout), nn.Linear(d_in, d_layer), nn.ReLU()]
        modules += [nn.BatchNorm1d(d_layer)] if batch_norm else []
        d_in = d_layer
    modules += [Dropout(dropout), nn.Linear(d_in, n_classes)]
    return nn.Sequential(*modules)
