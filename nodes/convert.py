"""Conversions between ComfyUI's data layouts and the engine's (no ComfyUI import: unit-tested without it).

- IMAGE: ComfyUI ``[B, H, W, C]`` float 0..1  <->  engine ``[B, C, H, W]`` float 0..1.
- LATENT: ComfyUI ``{"samples": unscaled VAE latents}``. A *noisy* latent handed to core samplers
  (``KSamplerAdvanced(add_noise="disable")``, ``SamplerCustom(add_noise=False)``) must be in k-diffusion scaling:
  for an epsilon model the sampler state at sigma is ``x0 + sigma * eps``, so a diffusers latent
  ``x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps`` becomes ``x_t / sqrt(abar) / scaling_factor``.
"""

from __future__ import annotations

import torch


def image_to_engine(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` -> ``[B, C, H, W]`` float32 (a copy: inputs are never mutated)."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    return image.movedim(-1, 1).float().clone()


def image_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """Engine ``[B, 3, H, W]`` in 0..1 -> ComfyUI IMAGE ``[B, H, W, 3]`` float32 on the CPU."""
    return images.detach().float().clamp(0, 1).movedim(1, -1).cpu().contiguous()


def noisy_latent_to_comfy(latents: torch.Tensor, alpha_cumprod: float, scaling_factor: float) -> dict:
    """Scaled diffusers latents at noise level ``alpha_cumprod`` -> a ComfyUI LATENT for core samplers."""
    samples = latents.detach().float().cpu() / (alpha_cumprod ** 0.5) / scaling_factor
    return {"samples": samples}


def clean_latent_to_comfy(latents: torch.Tensor, scaling_factor: float) -> dict:
    """Scaled clean latents -> ComfyUI LATENT (unscaled VAE latents)."""
    return {"samples": latents.detach().float().cpu() / scaling_factor}


def sigma_of(alpha_cumprod: float) -> float:
    """k-diffusion sigma of a DDPM noise level: ``sqrt((1 - abar) / abar)``."""
    return ((1 - alpha_cumprod) / alpha_cumprod) ** 0.5
