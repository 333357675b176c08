"""The model the engine works on: an SD 1.x-architecture text-to-image diffusion model and where it came from.

``DiffusionModel`` bundles the diffusers/transformers components with their provenance. Latents in the engine
are always *scaled* latents (``vae_latent * scaling_factor``, what the UNet sees), images are ``[B, 3, H, W]``
float tensors in 0..1. A model without a VAE works in pixel space (the toy world): its "latents" are the
images mapped to -1..1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from .errors import InputError


@dataclass
class LoadReport:
    """What one weights file did to a model: which component, which key naming, how many tensors."""

    path: str
    component: str  # "unet", "text_encoder", "vae", "pipeline", "lora"
    naming: str  # e.g. "diffusers", "compvis", "transformers4", "transformers5", "kohya", "peft"
    matched: int
    total: int  # tensors in the target component
    missing: list[str] = field(default_factory=list)  # target keys the file did not cover (partial files)
    unexpected: list[str] = field(default_factory=list)
    dtype: str = ""
    partial: bool = False
    note: str = ""
    changed: Optional[int] = None  # tensors whose values actually changed (None: not measured)

    def to_dict(self, max_keys: int = 20) -> dict:
        d = dict(self.__dict__)
        d["missing_count"] = len(self.missing)
        d["unexpected_count"] = len(self.unexpected)
        d["missing"] = self.missing[:max_keys]
        d["unexpected"] = self.unexpected[:max_keys]
        return d


@dataclass
class Provenance:
    base: str = ""  # base checkpoint file or diffusers folder ("" for models built in code)
    unlearned: list[str] = field(default_factory=list)
    method: str = ""  # e.g. "ESD", "AdvUnlearn", "MACE" if known or given by the user
    reports: list[LoadReport] = field(default_factory=list)
    loras: list[dict] = field(default_factory=list)  # LoRAs applied as adapters: {"name", "path", "weight"}

    def to_dict(self) -> dict:
        return {"base": self.base, "unlearned": list(self.unlearned), "method": self.method,
                "reports": [r.to_dict() for r in self.reports], "loras": list(self.loras)}


@dataclass
class DiffusionModel:
    """An SD 1.x-architecture model: ``unet``, ``text_encoder``, ``tokenizer``, ``vae`` (or None), ``scheduler``.

    ``scheduler`` is a ``DDIMScheduler`` carrying the training noise schedule (``alphas_cumprod``); sampling code
    copies it rather than mutating it.
    """

    unet: Any  # diffusers.UNet2DConditionModel
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    vae: Any | None  # diffusers.AutoencoderKL, or None for a pixel-space model
    scheduler: Any  # diffusers.DDIMScheduler
    provenance: Provenance = field(default_factory=Provenance)

    # ------------------------------------------------------------------ placement
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "DiffusionModel":
        """Move every component in place; returns ``self``. The text encoder and VAE follow the UNet."""
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def clone(self) -> "DiffusionModel":
        """A deep copy (weights included). Use when a caller's model must not be changed."""
        return DiffusionModel(copy.deepcopy(self.unet), copy.deepcopy(self.text_encoder), self.tokenizer,
                              copy.deepcopy(self.vae), copy.deepcopy(self.scheduler), copy.deepcopy(self.provenance))

    # ------------------------------------------------------------------ shapes
    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD 1.x, 1 for a pixel-space model)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return 1.0 if self.vae is None else float(self.vae.config.scaling_factor)

    @property
    def default_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        if height % f or width % f:
            raise InputError(f"image size {width}x{height} is not a multiple of {f}; resize or crop the images "
                             f"(the recovery resizes to --resolution, which must be a multiple of {f})")
        return (batch, self.latent_channels, height // f, width // f)

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[B, 77]``. A prompt longer than the tokenizer's limit is an error, not a silent cut."""
        max_len = int(self.tokenizer.model_max_length)
        for p in prompts:
            n = len(self.tokenizer(p, truncation=False).input_ids)
            if n > max_len:
                raise InputError(f"prompt is {n} tokens long, the text encoder takes at most {max_len} "
                                 f"(including start/end tokens); shorten it: {p[:80]!r}...")
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids
        return ids

    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Text embeddings ``[B, 77, D]`` (last hidden state, as SD 1.x uses), on the model's device/dtype."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        emb = self.text_encoder(ids)[0]
        return emb.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ images <-> latents
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, *, sample: bool = False,
                      generator: torch.Generator | None = None, batch_size: int = 8) -> torch.Tensor:
        """``[B, 3, H, W]`` in 0..1 -> scaled latents ``[B, C, H/f, W/f]``.

        ``sample=True`` draws from the VAE posterior (as the MemoRa reference does); ``False`` takes its mean.
        """
        self._check_images(images)
        x = images.to(device=self.device, dtype=self.dtype) * 2 - 1
        if self.vae is None:
            return x.contiguous()
        out = []
        for chunk in x.split(batch_size):
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            z = dist.sample(generator) if sample else dist.mean
            out.append(z * self.scaling_factor)
        return torch.cat(out).to(self.dtype).contiguous()

    @torch.no_grad()
    def latent_distribution(self, images: torch.Tensor, *, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior mean and std ``[B, C, h, w]`` each (std is 0 for a pixel-space model)."""
        self._check_images(images)
        x = images.to(device=self.device, dtype=self.dtype) * 2 - 1
        if self.vae is None:
            return x, torch.zeros_like(x)
        means, stds = [], []
        for chunk in x.split(batch_size):
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            means.append(dist.mean * self.scaling_factor)
            stds.append(dist.std * self.scaling_factor)
        return torch.cat(means).to(self.dtype).contiguous(), torch.cat(stds).to(self.dtype).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
        """Scaled latents -> images ``[B, 3, H, W]`` float32 in 0..1, on the model's device."""
        if self.vae is None:
            return ((latents.float() + 1) / 2).clamp(0, 1)
        out = []
        for chunk in latents.split(batch_size):
            img = self.vae.decode(chunk.to(self.vae.dtype) / self.scaling_factor).sample
            out.append(((img.float() + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise InputError(f"expected images as a [B, 3, H, W] tensor in 0..1, got {shape}")
        if images.shape[0] == 0:
            raise InputError("no images given")


def unet_eps(model: DiffusionModel, latents: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor,
             uncond: Optional[torch.Tensor] = None, guidance: float = 1.0) -> torch.Tensor:
    """Noise prediction for a batch, with classifier-free guidance in one batched UNet call.

    ``cond``/``uncond`` are ``[B, 77, D]`` (or ``[1, 77, D]``, broadcast to the batch). With ``guidance == 1`` or
    no ``uncond`` only the conditional branch runs.
    """
    b = latents.shape[0]
    cond = cond.expand(b, -1, -1) if cond.shape[0] == 1 else cond
    if uncond is None or (isinstance(guidance, (int, float)) and guidance == 1.0):
        return model.unet(latents, t, encoder_hidden_states=cond).sample
    uncond = uncond.expand(b, -1, -1) if uncond.shape[0] == 1 else uncond
    eps_u, eps_c = model.unet(torch.cat([latents, latents]), t,
                              encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)
