"""The benchmark's seed-style reference agrees with the classifier; a collated schedule changes nothing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_classifier

from spinn.data.batching import NLIDataset, collate_nli, pair_sentences
from spinn.data.snli import read_nli
from spinn.data.vocab import Vocab
from spinn.model import VARIANTS, NLIClassifier, build_schedule

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_spinn.py"
_spec = importlib.util.spec_from_file_location("reference_spinn", _PATH)
reference_spinn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_spinn)


@pytest.fixture(scope="module")
def snli(data_dir):
    data = read_nli(data_dir / "snli_1.0" / "snli_1.0_dev.jsonl", progress=False)
    examples = data.examples[:24]
    vocab = Vocab.build(t for ex in examples for t in (ex.premise, ex.hypothesis))
    return NLIDataset(examples, vocab), len(vocab)


def tiny(vocab_size: int, variant: str) -> NLIClassifier:
    return tiny_classifier(vocab_size, variant, d_embed=12, d_hidden=10, d_tracker=6, mlp_dim=16, dropout=0.0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_reference_matches_the_classifier(snli, variant, training):
    dataset, vocab_size = snli
    batch = collate_nli([dataset[i] for i in range(len(dataset))])
    model = tiny(vocab_size, variant).train(training)
    ref = reference_spinn.reference_for(model)
    out, ref_out = model(batch), ref(batch)
    torch.testing.assert_close(out.logits, ref_out[0], atol=1e-5, rtol=1e-5)
    loss, ref_loss = model.loss(out, batch.labels), ref.loss(ref_out, batch.labels)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    if training:
        loss.backward()
        ref_loss.backward()
        for name in ("encoder.leaf.weight", "encoder.leaf.bias", "mlp.2.weight"):
            grad = dict(model.named_parameters())[name].grad
            torch.testing.assert_close(grad, dict(ref.named_parameters())[name].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["spinn_pi_nt", "spinn_pi"])
def test_a_collated_schedule_equals_one_built_in_forward(snli, variant):
    dataset, vocab_size = snli
    items = [dataset[i] for i in range(len(dataset))]
    batch, plain = collate_nli(items, schedule=True), collate_nli(items)
    assert plain.schedule is None
    pairs = pair_sentences(plain)
    expected = build_schedule(pairs.transitions, pairs.lengths)
    for key, value in vars(expected).items():
        got = getattr(batch.schedule, key)
        assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, key
    assert batch.to("cpu").schedule is not None
    model = tiny(vocab_size, variant).train()
    torch.manual_seed(1)
    with_schedule = model(batch).logits
    torch.manual_seed(1)
    assert torch.equal(with_schedule, model(plain).logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_training_step_needs_no_host_round_trip(snli, variant, monkeypatch):
    """With the schedule collated, the step loop never reads a tensor back (a device sync on a GPU)."""
    dataset, vocab_size = snli
    batch = collate_nli([dataset[i] for i in range(len(dataset))], schedule=True)
    model = tiny(vocab_size, variant).train()

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    if torch.cuda.is_available():
        model, batch = model.cuda(), batch.to("cuda")
        torch.cuda.set_sync_debug_mode("error")
    try:
        model.loss(model(batch), batch.labels).backward()
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")


def test_the_benchmark_runs_end_to_end_at_tiny_sizes(data_dir, tmp_path, monkeypatch):
    """bench_model.py as gpu.sh runs it (--n-batches 1, two batch sizes), on the CPU with a tiny model:
    every row is measured, saved and sane, and every implementation is warmed up before it is timed."""
    spec = importlib.util.spec_from_file_location("bench_model", _PATH.with_name("bench_model.py"))
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_model", bench)  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "SIZES", {8: 4, 300: 64})  # 300: the time-per-token model
    calls: dict[str, int] = {}
    side_by_side = bench.side_by_side

    def counted(name, fn):
        def call():
            calls[name] = calls.get(name, 0) + 1
            return fn()

        return call

    def counting(fns, reps):
        return side_by_side({name: counted(name, fn) for name, fn in fns.items()}, reps)

    monkeypatch.setattr(bench, "side_by_side", counting)
    out = tmp_path / "b.json"
    argv = ["--data", str(data_dir), "--d-hidden", "8", "--batch-sizes", "4", "8", "--n-batches", "1"]
    argv += ["--reps", "1", "--token-batch", "2", "--variants", "spinn_pi_nt", "spinn", "--json", str(out)]
    monkeypatch.setattr("sys.argv", ["bench_model.py", *argv])
    threads = torch.get_num_threads()
    try:
        bench.main()
    finally:  # it sets one thread; later tests compare in-process runs with runs in fresh processes
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    rows = result["throughput"]
    assert [(r["variant"], r["batch"]) for r in rows] == [
        (v, b) for v in ("spinn_pi_nt", "spinn") for b in (4, 8)
    ]
    for r in rows:
        assert r["max_logit_diff"] < 1e-5 and r["train_ratio"] > 0 and r["eval_ceiling"] > 0
        assert r["ref_mem_mb"] > 0
    assert calls["ref_train"] == calls["ours_train"] == 2 * len(rows)  # a warm-up and one timed call each
    assert [p["words"] for p in result["per_token"]] == [10, 20, 40, 80]
