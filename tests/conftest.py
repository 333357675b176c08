"""Shared fixtures: tiny SD1-layout models built in code (no hub, no network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MEMORA_TEST_THREADS", "1")))  # small models: 1 thread is fastest


def make_tiny_model(seed: int = 0):
    """A random-weight SD1-layout ``DiffusionModel`` (64 px images -> 8x8 latents).

    The VAE's scaling factor is set to 1/std of its latents on random images, so latents have unit scale as in
    SD (a random VAE's raw latents are ~0.05, which would make every error relative to them meaningless).
    """
    from memora.model import DiffusionModel
    from memora.sd1 import build_components

    c = build_components("tiny", seed=seed)
    model = DiffusionModel(**c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = model.vae.encode(torch.rand(4, 3, 64, 64, generator=g) * 2 - 1).latent_dist.mean
    model.vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return model


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
