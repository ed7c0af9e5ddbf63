"""The bf16 decision, shared by training and evaluation: bf16 on CUDA only."""

import torch

from spinn.precision import bf16_applies, bf16_autocast


def test_bf16_applies_on_cuda_only_and_when_asked():
    assert bf16_applies(True, torch.device("cuda"))
    assert not bf16_applies(False, torch.device("cuda"))
    assert not bf16_applies(True, torch.device("cpu"))


def test_the_cpu_context_computes_in_float32_whatever_was_asked():
    a = torch.randn(4, 4)
    for requested in (True, False):
        with bf16_autocast(requested, torch.device("cpu")):
            assert (a @ a).dtype == torch.float32
