"""SICK relatedness with SPINN: predict the 1-5 relatedness of two sentences from their vectors.

The setup of Tai et al. (2015, sec. 5.2): both sentences are encoded by one SPINN, the features
[h1 * h2, |h1 - h2|] feed a small MLP that outputs a distribution over the scores 1..5, trained with
the KL divergence to the sparse target distribution of the gold score; the prediction is the
distribution's mean. Reports Pearson's r, Spearman's rho and the MSE on the test set, using the
dev epoch with the best r.

    python examples/sick_relatedness.py                       # a few minutes on a CPU
    python examples/sick_relatedness.py --variant spinn_pi --epochs 10
    python examples/sick_relatedness.py --max-steps 5         # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinn import SPINN, Sentences, cli, pad_sentences, parse_to_transitions
from spinn.data.glove import load_glove
from spinn.data.vocab import Vocab
from spinn.errors import SpinnError

Pair = tuple[list[str], list[int], list[str], list[int], float]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="holds sick/ and glove/")
    p.add_argument("--glove", default="glove/glove.840B.300d.sick_vocab.txt", help="relative to --data")
    p.add_argument("--d-embed", type=int, default=300, help="size of the GloVe vectors")
    p.add_argument("--variant", choices=("spinn_pi_nt", "spinn_pi"), default="spinn_pi_nt")
    p.add_argument("--d-hidden", type=int, default=150)
    p.add_argument("--d-tracker", type=int, default=64, help="for spinn_pi")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many batches (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    return p


def read_sick(path: Path) -> list[Pair]:
    pairs = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            w1, t1 = parse_to_transitions(row["sentence1_binary_parse"])
            w2, t2 = parse_to_transitions(row["sentence2_binary_parse"])
            pairs.append((w1, t1, w2, t2, float(row["relatedness_score"])))
    return pairs


class Relatedness(nn.Module):
    """Frozen GloVe -> SPINN -> [h1 * h2, |h1 - h2|] -> MLP -> log-probabilities of the scores 1..5."""

    def __init__(self, embeddings: Tensor, d_hidden: int, d_tracker: int | None) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embeddings, freeze=True, padding_idx=0)
        self.encoder = SPINN(embeddings.shape[1], d_hidden, d_tracker)
        self.mlp = nn.Sequential(nn.Linear(2 * d_hidden, 50), nn.Sigmoid(), nn.Linear(50, 5))

    def forward(self, sentences: Sentences) -> Tensor:
        """sentences: first sentences then second sentences, (2B, ...) -> (B, 5) log-probabilities."""
        h = self.encoder(self.embed(sentences.tokens), sentences.transitions, sentences.lengths).h
        h1, h2 = h.chunk(2)
        return F.log_softmax(self.mlp(torch.cat((h1 * h2, (h1 - h2).abs()), dim=1)), dim=1)


def target_distribution(scores: Tensor) -> Tensor:
    """(B,) scores in [1, 5] -> (B, 5): mass split between the two nearest integers (Tai et al.)."""
    low = scores.floor().clamp(1, 4)
    upper = scores - low
    p = torch.zeros(len(scores), 5)
    p.scatter_(1, (low - 1).long()[:, None], (1 - upper)[:, None])
    p.scatter_add_(1, low.long()[:, None], upper[:, None])
    return p


def batches(pairs: list[Pair], vocab: Vocab, size: int, shuffle: bool):
    order = torch.randperm(len(pairs)).tolist() if shuffle else range(len(pairs))
    order = list(order)
    for i in range(0, len(order), size):
        chunk = [pairs[j] for j in order[i : i + size]]
        words = [vocab.encode(p[0]) for p in chunk] + [vocab.encode(p[2]) for p in chunk]
        sentences = pad_sentences(words, [p[1] for p in chunk] + [p[3] for p in chunk])
        yield sentences, torch.tensor([p[4] for p in chunk])


def evaluate(model: Relatedness, pairs: list[Pair], vocab: Vocab) -> dict[str, float]:
    model.eval()
    preds, golds = [], []
    with torch.no_grad():
        for sentences, scores in batches(pairs, vocab, 256, shuffle=False):
            preds.append(model(sentences).exp() @ torch.arange(1.0, 6.0))
            golds.append(scores)
    pred, gold = torch.cat(preds), torch.cat(golds)
    return {
        "pearson": torch.corrcoef(torch.stack((pred, gold)))[0, 1].item(),
        "spearman": torch.corrcoef(torch.stack((_ranks(pred), _ranks(gold))))[0, 1].item(),
        "mse": F.mse_loss(pred, gold).item(),
    }


def _ranks(x: Tensor) -> Tensor:
    """Ranks with ties averaged, for Spearman's rho."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return (first + (counts - 1) / 2.0)[inverse]


def train(model: Relatedness, data: dict[str, list[Pair]], vocab: Vocab, args: argparse.Namespace):
    """Train; keep the weights of the epoch with the best dev Pearson r."""
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    best, best_state, step = -2.0, None, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.perf_counter()
        for sentences, scores in batches(data["train"], vocab, args.batch_size, shuffle=True):
            loss = F.kl_div(model(sentences), target_distribution(scores), reduction="batchmean")
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                break
        dev = evaluate(model, data["dev"], vocab)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}: dev r {dev['pearson']:.4f}  mse {dev['mse']:.4f}  ({seconds:.0f}s)")
        if dev["pearson"] > best:
            best = dev["pearson"]
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if args.max_steps is not None and step >= args.max_steps:
            break
    model.load_state_dict(best_state)
    return model


def run(args: argparse.Namespace) -> int:
    if not (args.data / "sick").is_dir():
        raise SpinnError(
            f"{args.data / 'sick'}: no such folder; pass --data the folder holding sick/ and glove/"
        )
    torch.manual_seed(args.seed)
    data = {s: read_sick(args.data / "sick" / f"sick_{s}_binary.jsonl") for s in ("train", "dev", "test")}
    # Every split's words get their GloVe row; only the frozen vectors are shared, no labels.
    vocab = Vocab.build(words for pairs in data.values() for p in pairs for words in (p[0], p[2]))
    glove = load_glove(
        args.data / args.glove, vocab, args.d_embed, cache_dir=Path(tempfile.gettempdir()) / "spinn-glove"
    )
    print(f"vocabulary {len(vocab)} words, {glove.found} found in GloVe")
    d_tracker = args.d_tracker if args.variant == "spinn_pi" else None
    model = train(Relatedness(glove.vectors, args.d_hidden, d_tracker), data, vocab, args)
    test = evaluate(model, data["test"], vocab)
    print(
        f"test: Pearson r {test['pearson']:.4f}  Spearman rho {test['spearman']:.4f}  MSE {test['mse']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), run))  # user errors as one line, exit status 2
