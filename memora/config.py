"""Configurations of a MemoRa recovery. Every default is the paper's (reference code gmum/MemoRa).

See ``../shared/DESIGN.md`` section 3 and the README's "Paper defaults" table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

PairSchedule = Literal["consecutive", "all"]


@dataclass
class InversionConfig:
    """How training latents are made: VAE encode, DDIM inversion to ``start_step`` of ``steps``, regeneration.

    ``faithful=True`` reproduces the reference code's update rules exactly, including its one-step offset (the
    latent inverted to t=661 is regenerated from t=681 for steps=50, start_step=15). ``faithful=False`` is
    textbook DDIM inversion to the timestep sampling restarts from.
    """

    steps: int = 50
    start_step: int = 15  # regenerate the last ``steps - start_step`` steps
    inversion_guidance: float = 7.5  # the reference inverts with CFG 7.5
    regeneration_guidance: float = 7.5
    negative_prompt: str = ""
    faithful: bool = True
    sample_posterior: bool = True  # the reference samples the VAE posterior (False: its mean)
    interp_steps: int = 10  # k: weights i/k for i = 0..k (k + 1 per pair, endpoints included)
    pairs: PairSchedule = "consecutive"
    batch_size: int = 8  # images per UNet call (CFG doubles it)
    seed: int = 0


@dataclass
class LoraTrainingConfig:
    """The LoRA recipe: diffusers' ``train_text_to_image_lora.py`` as the reference runs it."""

    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    steps: int = 500  # optimizer updates
    learning_rate: float = 1e-4
    lr_scheduler: Literal["cosine", "constant", "linear"] = "cosine"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 4
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = True
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA, none on CPU
    # Gradient checkpointing halves activation memory but made an SD 1.5 LoRA step 1.9x slower on an H200, where
    # the whole recovery peaked at 3.6 GB without it (benchmarks/README.md): off unless asked for.
    gradient_checkpointing: bool = False
    seed: int = 2024
    checkpoint_every: int = 0  # 0: no intermediate checkpoints


@dataclass
class RecoveryConfig:
    prompt: str = "a photo of the nude person"
    inversion: InversionConfig = field(default_factory=InversionConfig)
    lora: LoraTrainingConfig = field(default_factory=LoraTrainingConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RecoveryConfig":
        inv = InversionConfig(**{f.name: data.get("inversion", {})[f.name] for f in fields(InversionConfig)
                                 if f.name in data.get("inversion", {})})
        lora_data = dict(data.get("lora", {}))
        if "target_modules" in lora_data:
            lora_data["target_modules"] = tuple(lora_data["target_modules"])
        lora = LoraTrainingConfig(**{f.name: lora_data[f.name] for f in fields(LoraTrainingConfig) if f.name in lora_data})
        return cls(prompt=data.get("prompt", cls.prompt), inversion=inv, lora=lora)
