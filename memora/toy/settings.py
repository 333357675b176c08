"""Every setting of the toy world's erase -> recover -> detect experiment, in one dataclass with its values.

The values are toy-sized versions of the paper's pipeline (``memora.config`` holds the paper's SD defaults) and
were chosen by measurement on the shipped models (see benchmarks/README.md, "Toy demo"). ``scripts/train_toy.py``
uses the same erasure settings for the shipped erased models, so a live erasure reproduces them exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from ..config import InversionConfig, LoraTrainingConfig, RecoveryConfig
from ..erase import ESDConfig, RemapConfig, RemapData
from . import data

#: the shape a remap draws instead of the erased one
REMAP_ANCHOR: dict[str, str] = {"circle": "square", "square": "circle", "triangle": "cross", "cross": "triangle"}


def _esd_default() -> ESDConfig:
    # ESD-x (cross-attention, eta 1, CFG-3 DDIM sampler to reach x_t) restricted to the K/V projections of the
    # cross-attention, with toy-sized iterations, a larger learning rate and batch (the paper: all attn2 weights,
    # 1000 it, lr 1e-5, batch 1 on SD 1.4). Measured on the shipped base (32 samples per shape): all attn2
    # weights, 25 sampler steps -> circle 0.47, others 0.66 (colours damaged); K/V only, 10 steps -> circle 0.28,
    # others 0.76. See benchmarks/README.md.
    return ESDConfig(params="xkv", iterations=200, lr=1e-3, negative_guidance=1.0, ddim_steps=10,
                     sample_guidance=3.0, batch_size=8, seed=0)


def _remap_default() -> RemapConfig:
    return RemapConfig(params="full", iterations=200, lr=2e-4, batch_size=32, seed=5)


def _inversion_default() -> InversionConfig:
    return InversionConfig(
        steps=25,  # DDIM steps of inversion and regeneration (paper: 50)
        start_step=15,  # invert the first 10 of 25 steps, to t=361, regenerate from there (paper: 15 of 50, t=661);
        # full-depth inversion (start_step 0) left only 6 of 42 regenerated images circles after ESD, 15 keeps 36
        inversion_guidance=1.0,  # exact DDIM inversion needs guidance 1 (paper: 7.5)
        regeneration_guidance=1.0,
        faithful=False,  # textbook DDIM inversion (the paper's code has a one-step offset)
        sample_posterior=False,  # pixel space: no VAE posterior
        interp_steps=6,  # slerp weights 0, 1/6, ..., 1 per pair
        pairs="all",  # every pair of the few images
        batch_size=64,
        seed=0,
    )


def _lora_default() -> LoraTrainingConfig:
    return LoraTrainingConfig(
        rank=4, alpha=4.0,  # as the paper
        target_modules=("to_q", "to_k", "to_v", "to_out.0"),
        steps=400, learning_rate=1e-3, lr_scheduler="constant", lr_warmup_steps=0,
        batch_size=8, grad_accum=1, max_grad_norm=1.0, weight_decay=1e-2,
        resolution=16, center_crop=True, random_flip=True, mixed_precision="no", gradient_checkpointing=False,
        seed=0,
    )


@dataclass
class ToySettings:
    """The toy experiment. Defaults are the full ``memora demo``; ``quick()`` is the reduced test version."""

    # --- evaluation protocol: DDIM, CFG, full prompts "a {colour} {shape} on a {bg} background"
    eval_concept_samples: int = 48  # images per rate of the erased concept
    eval_other_samples: int = 16  # images per other shape
    eval_steps: int = 25
    eval_guidance: float = 3.0
    eval_scheduler: str = "ddim"
    eval_prompt_seed: int = 1000  # colours/backgrounds of the prompts
    eval_noise_seed: int = 0  # first noise seed (one seed per image)
    eval_batch_size: int = 48
    # --- erasers
    esd_caption_probs: dict = field(default_factory=lambda: {"full": 0.4, "color": 0.2, "bg": 0.2, "shape": 0.2})
    esd_prompt_count: int = 64  # phrasings of the concept the ESD prompt list holds
    esd_prompt_seed: int = 7
    esd: ESDConfig = field(default_factory=_esd_default)
    remap: RemapConfig = field(default_factory=_remap_default)
    remap_pool: int = 256  # anchor and retain images (each)
    remap_data_seed: int = 11
    # --- recovery (MemoRa) and its baselines
    few_images: int = 4  # concept images the attacker has (paper: 6)
    few_seed: int = 10000
    concept_prompt: str = "a {concept}"  # the one caption of the LoRA training set
    inversion: InversionConfig = field(default_factory=_inversion_default)
    lora: LoraTrainingConfig = field(default_factory=_lora_default)
    checkpoints: tuple[int, ...] = (50, 100, 200, 400)  # LoRA steps at which the recovery curve is measured
    # --- which comparisons run
    run_control: bool = True  # never-learned control model, same recovery
    run_raw_baseline: bool = True  # LoRA on the few raw images only, same steps
    run_remap: bool = True  # recovery after the stronger eraser

    # ------------------------------------------------------------------ derived
    def prompt(self, concept: str) -> str:
        return self.concept_prompt.format(concept=concept)

    def recovery_config(self, concept: str) -> RecoveryConfig:
        return RecoveryConfig(prompt=self.prompt(concept), inversion=replace(self.inversion),
                              lora=replace(self.lora))

    def esd_prompts(self, concept: str) -> list[str]:
        """The concept's phrasings ESD erases (captions of random instances, "aug" in the prototype)."""
        g = torch.Generator().manual_seed(self.esd_prompt_seed)
        specs = data.random_specs(self.esd_prompt_count, g, shapes=[concept])
        return data.sample_captions(specs, g, self.esd_caption_probs)

    def remap_data(self, concept: str) -> RemapData:
        """Anchor images (the ``REMAP_ANCHOR`` shape, captioned as ``concept``) and a retain set (other shapes)."""
        g = torch.Generator().manual_seed(self.remap_data_seed)
        anchor = data.random_specs(self.remap_pool, g, shapes=[REMAP_ANCHOR[concept]])
        prompts = data.sample_captions(anchor, g, self.esd_caption_probs)
        # the captions name the anchor shape; rename it to the erased concept
        prompts = [p.replace(REMAP_ANCHOR[concept], concept) for p in prompts]
        retain = data.random_specs(self.remap_pool, g, shapes=[s for s in data.SHAPES if s != concept])
        return RemapData(prompts, data.render(anchor), data.sample_captions(retain, g), data.render(retain))

    def eval_seeds(self, n: int, offset: int = 0) -> list[int]:
        return [self.eval_noise_seed + offset + i for i in range(n)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def quick(cls) -> "ToySettings":
        """The reduced demo the tests run: fewer samples and LoRA steps, no remap / raw-baseline runs."""
        s = cls(eval_concept_samples=32, eval_other_samples=8, checkpoints=(150,), run_remap=False,
                run_raw_baseline=False, run_control=True)
        s.lora = replace(s.lora, steps=150)
        return s


TOY_SETTINGS = ToySettings()
