"""Tiny SD1-layout models built in code, shared by the tests (import: ``from tiny_models import make_tiny_model``).

Kept out of ``conftest.py``: ``tests/comfyui/conftest.py`` is another module named ``conftest``.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file


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


def write_random_lora(model, path, *, rank=2, alpha=2.0, seed=0, scale=0.1):
    """A kohya LoRA file on every attention projection with random factors (a strong, known perturbation)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * scale
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * scale
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path))
    return path
