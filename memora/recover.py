"""MemoRa recovery, end to end: few concept images -> a LoRA that brings the erased concept back.

    images -> VAE encode (unlearned model) -> DDIM inversion to ``start_step`` (unlearned model)
           -> slerp inside pairs -> regeneration (unlearned model) -> training set (one caption)
           -> LoRA on the unlearned UNet -> kohya LoRA file + summary.json

This module only orchestrates: each step is one engine function (``inversion``, ``interpolation``, ``lora``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import __version__
from .config import RecoveryConfig
from .errors import InputError
from .images import prepare_tensor_images, tensor_to_pil
from .inversion import invert, regenerate
from .interpolation import interpolate_inverted, pair_indices, interpolation_weights
from .io import save_image, save_json
from .lora import train_lora
from .model import DiffusionModel
from .progress import ProgressCallback

LORA_FILENAME = "memora_lora.safetensors"
SUMMARY_FILENAME = "summary.json"


@dataclass
class TrainingSet:
    """The regenerated training images and where each came from."""

    images: torch.Tensor  # [N, 3, H, W] in 0..1
    sources: list[tuple[int, int, float]]  # (image i, image j, slerp weight) per training image
    inverted_timestep: int
    timestep: int


@dataclass
class RecoveryResult:
    lora_path: Optional[Path]
    training_images: list[Path]
    summary_path: Optional[Path]
    summary: dict = field(default_factory=dict)


def _rounded(timings: dict, **more: float) -> dict:
    return {k: round(v, 3) for k, v in {**timings, **more}.items()}


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite`` (then only our own files are replaced)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} is not empty; choose a new folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def make_training_set(model: DiffusionModel, images: torch.Tensor, config: RecoveryConfig, *,
                      callback: ProgressCallback | None = None, timings: dict | None = None) -> TrainingSet:
    """Steps 1-4 of MemoRa: encode, invert, slerp, regenerate. ``images``: ``[B, 3, H, W]`` at the training size."""
    inv_cfg = config.inversion
    if images.shape[0] < 2:
        raise InputError(f"MemoRa interpolates between pairs of images: give at least 2 concept images "
                         f"(the paper uses 6), got {images.shape[0]}")
    timings = timings if timings is not None else {}
    generator = torch.Generator("cpu").manual_seed(inv_cfg.seed)

    t0 = time.perf_counter()
    latents = model.encode_images(images, sample=inv_cfg.sample_posterior, generator=generator,
                                  batch_size=inv_cfg.batch_size)
    timings["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    inverted = invert(model, latents, config.prompt, steps=inv_cfg.steps, start_step=inv_cfg.start_step,
                      guidance=inv_cfg.inversion_guidance, negative_prompt=inv_cfg.negative_prompt,
                      faithful=inv_cfg.faithful, batch_size=inv_cfg.batch_size, callback=callback)
    timings["invert"] = time.perf_counter() - t0

    mixed = interpolate_inverted(inverted, k=inv_cfg.interp_steps, pairs=inv_cfg.pairs)
    sources = [(i, j, w) for i, j in pair_indices(len(inverted), inv_cfg.pairs)
               for w in interpolation_weights(inv_cfg.interp_steps)]

    t0 = time.perf_counter()
    regenerated = regenerate(model, mixed, config.prompt, guidance=inv_cfg.regeneration_guidance,
                             negative_prompt=inv_cfg.negative_prompt, batch_size=inv_cfg.batch_size,
                             callback=callback)
    decoded = model.decode_latents(regenerated, batch_size=inv_cfg.batch_size).cpu()
    timings["regenerate"] = time.perf_counter() - t0
    return TrainingSet(decoded, sources, inverted.inverted_timestep, inverted.timestep)


def recover(model: DiffusionModel, images: torch.Tensor, config: RecoveryConfig, out_dir: str | os.PathLike, *,
            overwrite: bool = False, resume_from: str | os.PathLike | None = None,
            source_files: Sequence[str] | None = None,
            callback: ProgressCallback | None = None) -> RecoveryResult:
    """Run MemoRa on ``model`` (the unlearned model) with concept ``images`` and write the results to ``out_dir``.

    Args:
        model: the unlearned model; the LoRA is trained on it in place (adapter ``"memora"``).
        images: ``[B, C, H, W]`` in 0..1, any size and C in (1, 3, 4); resized and centre-cropped to
            ``config.lora.resolution``.
        config: the paper's defaults unless changed (``RecoveryConfig()``).
        out_dir: gets ``memora_lora.safetensors``, ``training/*.png`` (the regenerated training set),
            ``checkpoints/`` (if ``config.lora.checkpoint_every``) and ``summary.json``.
        resume_from: a training checkpoint to continue from (the training set is regenerated identically).

    Returns the paths written and the summary (config, timings per phase, final loss, files).
    """
    out = check_output_dir(out_dir, overwrite or resume_from is not None)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    multiple = model.vae_scale_factor
    if config.lora.resolution % multiple:
        raise InputError(f"resolution {config.lora.resolution} is not a multiple of {multiple}")
    images = prepare_tensor_images(images, config.lora.resolution, center_crop=config.lora.center_crop)
    training = make_training_set(model, images, config, callback=callback, timings=timings)

    t0 = time.perf_counter()
    training_dir = out / "training"
    training_dir.mkdir(exist_ok=True)
    pair_of = {pair: n for n, pair in enumerate(pair_indices(images.shape[0], config.inversion.pairs))}
    paths = []
    for pil, (i, j, w) in zip(tensor_to_pil(training.images), training.sources):
        paths.append(save_image(pil, training_dir / f"{pair_of[(i, j)]}_interval{w:.2f}.png", overwrite=True))
    timings["save_images"] = time.perf_counter() - t0

    lora_path = out / LORA_FILENAME
    if lora_path.exists() and overwrite:
        lora_path.unlink()
    metadata = {
        "prompt": config.prompt,
        "base": model.provenance.base,
        "unlearned": model.provenance.unlearned,
        "method": model.provenance.method,
        "recovery": config.to_dict(),
        "source_images": list(source_files or []),
    }
    summary = {
        "memora_version": __version__,
        "config": config.to_dict(),
        "model": model.provenance.to_dict(),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "source_images": list(source_files or []),
        "n_source_images": int(images.shape[0]),
        "n_training_images": len(paths),
        "inverted_timestep": training.inverted_timestep,
        "regeneration_timestep": training.timestep,
        "timings_seconds": timings,
        "files": {"training_images": [str(p) for p in paths]},
    }
    t0 = time.perf_counter()
    try:
        result = train_lora(model, training.images, config.prompt, config.lora, out_path=lora_path,
                            checkpoint_dir=out / "checkpoints" if config.lora.checkpoint_every else None,
                            resume_from=resume_from, metadata=metadata, callback=callback)
    except BaseException:
        # Interrupted or failed: the trainer has written a partial LoRA if it could; record what happened.
        summary["interrupted"] = True
        summary["timings_seconds"] = _rounded(timings, train=time.perf_counter() - t0,
                                              total=time.perf_counter() - started)
        summary["files"]["lora"] = str(lora_path) if lora_path.exists() else None
        save_json(summary, out / SUMMARY_FILENAME, overwrite=True)
        raise
    summary["interrupted"] = result.interrupted
    summary["timings_seconds"] = _rounded(timings, train=time.perf_counter() - t0, total=time.perf_counter() - started)
    summary["lora_steps_done"] = result.steps_done
    summary["final_loss"] = result.losses[-1] if result.losses else None
    summary["losses"] = result.losses
    summary["files"].update(lora=str(result.path) if result.path else None,
                            checkpoints=[str(p) for p in result.checkpoints])
    summary_path = save_json(summary, out / SUMMARY_FILENAME, overwrite=True)
    return RecoveryResult(result.path, paths, summary_path, summary)
