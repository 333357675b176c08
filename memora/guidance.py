"""Guidance between LoRA'd and plain models: AutoMemoRa and Multi-MemoRa.

AutoMemoRa (memora-reference section 2.1) guides a "main" model with a "bad" one, like autoguidance: at every
step each model does its own classifier-free guidance with scale ``g`` and

    eps = eps_bad + w * (eps_main - eps_bad)

with main = the unlearned model + MemoRa LoRA and bad = the unlearned model (``main="unlearned"`` swaps the
roles). Both are the same UNet: the "bad" prediction runs with the LoRA adapters disabled, so nothing is copied.
``w = 1`` is plain generation with the LoRA, ``w = 0`` plain generation without it.

Multi-MemoRa loads several MemoRa LoRAs (one per concept) as separate adapters and activates them together with
their weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch

from .errors import InputError
from .lora import active_lora_weights, adapter_names, load_lora, set_lora_weights
from .model import DiffusionModel
from .sampling import EpsFn, SchedulerName, cfg_eps, generate


@contextlib.contextmanager
def adapters_disabled(model: DiffusionModel) -> Iterator[None]:
    """Run the UNet without any LoRA adapter inside the block; adapters are re-enabled afterwards, even on errors."""
    model.unet.disable_adapters()
    try:
        yield
    finally:
        model.unet.enable_adapters()


def automemora_eps(model: DiffusionModel, *, lora_adapter: str = "memora", w: float = 2.0,
                   main: Literal["lora", "unlearned"] = "lora") -> EpsFn:
    """An ``eps_fn`` for ``memora.sampling.generate`` doing AutoMemoRa guidance.

    ``eps = eps_bad + w * (eps_main - eps_bad)``, each ``eps_X`` being model X's own CFG prediction. With
    ``main="lora"`` main is the UNet with its active adapters (which must include ``lora_adapter``) and bad is the
    UNet with every adapter disabled; ``main="unlearned"`` swaps them. ``w == 1`` (or ``0``) evaluates only the
    model that the formula keeps.
    """
    if lora_adapter not in adapter_names(model):
        raise InputError(f"no LoRA adapter named {lora_adapter!r} on the model (loaded: "
                         f"{adapter_names(model) or 'none'}); load the MemoRa LoRA first (memora.lora.load_lora)")
    weights = active_lora_weights(model)
    if lora_adapter not in weights:
        raise InputError(f"the LoRA adapter {lora_adapter!r} is loaded but not active; activate it with "
                         f"memora.lora.set_lora_weights(model, {{{lora_adapter!r}: 1.0}})")
    if main not in ("lora", "unlearned"):
        raise InputError(f"main must be 'lora' or 'unlearned', got {main!r}")
    w = float(w)

    def eps_lora(latents, t, cond, uncond, guidance):
        return cfg_eps(model, latents, t, cond, uncond, guidance)

    def eps_unlearned(latents, t, cond, uncond, guidance):
        with adapters_disabled(model):
            return cfg_eps(model, latents, t, cond, uncond, guidance)

    eps_main, eps_bad = (eps_lora, eps_unlearned) if main == "lora" else (eps_unlearned, eps_lora)

    def eps_fn(latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               guidance: torch.Tensor) -> torch.Tensor:
        if w == 1.0:
            return eps_main(latents, t, cond, uncond, guidance)
        if w == 0.0:
            return eps_bad(latents, t, cond, uncond, guidance)
        e_main = eps_main(latents, t, cond, uncond, guidance)
        e_bad = eps_bad(latents, t, cond, uncond, guidance)
        return e_bad + w * (e_main - e_bad)

    return eps_fn


def generate_automemora(model: DiffusionModel, prompts: str | Sequence[str], *, seeds: int | Sequence[int],
                        w: float = 2.0, guidance: float | Sequence[float] = 7.5, steps: int = 50,
                        scheduler: SchedulerName = "lms", lora_adapter: str = "memora",
                        main: Literal["lora", "unlearned"] = "lora", **kwargs) -> torch.Tensor:
    """``memora.sampling.generate`` with AutoMemoRa guidance; returns ``[B, 3, H, W]`` in 0..1 on the CPU.

    Costs two CFG evaluations per step (four UNet inputs per image) unless ``w`` is 0 or 1. Other keyword
    arguments (``negative_prompt``, ``height``, ``width``, ``batch_size``, ``callback``, ``latents``) go to
    ``generate``.
    """
    eps_fn = automemora_eps(model, lora_adapter=lora_adapter, w=w, main=main)
    return generate(model, prompts, seeds=seeds, guidance=guidance, steps=steps, scheduler=scheduler,
                    eps_fn=eps_fn, **kwargs)


def apply_multi_memora(model: DiffusionModel, loras: Sequence[tuple[str | Path, float]], *,
                       text_encoder: Literal["error", "ignore"] = "error") -> list[str]:
    """Load several LoRA files as separate adapters and activate exactly them, with their weights.

    ``loras`` is ``[(path, weight), ...]``; returns the adapter names in the same order. The UNet then computes
    ``W + sum_i weight_i * (alpha_i / r_i) * B_i A_i`` for every adapted layer. Adapters loaded before stay on the
    model but are deactivated.
    """
    if not loras:
        raise InputError("no LoRA files given for Multi-MemoRa")
    names = []
    for path, weight in loras:
        names.append(load_lora(model, path, weight=float(weight), text_encoder=text_encoder))
    model.unet.set_adapters(names, [float(w) for _, w in loras])  # exactly these adapters are active
    set_lora_weights(model, dict(zip(names, (float(w) for _, w in loras))))  # records the weights in provenance
    return names
