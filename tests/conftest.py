"""Shared fixtures: tiny SD1-layout models built in code (no hub, no network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import pytest
import torch

from tiny_models import make_tiny_model

torch.set_num_threads(int(os.environ.get("MEMORA_TEST_THREADS", "1")))  # small models: 1 thread is fastest


@pytest.fixture
def tiny_model():
    return make_tiny_model(0)


@pytest.fixture
def tiny_images():
    """Four deterministic 64 px RGB images in 0..1: smooth colour gradients with a bright disc."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    imgs = []
    for i in range(4):
        base = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2
        grad = 0.2 * torch.stack([xx, yy, xx * yy]) * (i + 1) / 4
        disc = ((xx - 0.3 * (i - 1.5) / 1.5) ** 2 + yy ** 2 < 0.2).float()
        imgs.append((base + grad + 0.3 * disc).clamp(0, 1))
    return torch.stack(imgs)
