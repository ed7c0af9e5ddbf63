"""Mixed precision: whether a run computes in bf16, decided here once for training and evaluation."""

from __future__ import annotations

import contextlib

import torch


def bf16_applies(requested: bool, device: torch.device) -> bool:
    """`requested` (train.bf16) takes effect on CUDA only; elsewhere the run computes in float32."""
    return requested and device.type == "cuda"


def bf16_autocast(requested: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """A bf16 autocast context where `bf16_applies`, and one that changes nothing elsewhere."""
    if bf16_applies(requested, device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
