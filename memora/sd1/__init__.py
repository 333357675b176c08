"""Stable Diffusion 1.x architecture, offline.

Everything needed to build SD 1.x components without a model hub: the component configs of SD 1.4/1.5
(identical architectures), the CLIP tokenizer files shipped with the package (OpenAI's CLIP BPE vocabulary,
49 408 tokens), the DDIM scheduler with SD's noise schedule, and small SD1-layout models for tests and
benchmarks.

Sizes:
- ``"sd1"``: the real SD 1.x shapes (UNet 859.5 M params, VAE 83.7 M, CLIP-L text encoder 123.1 M).
- ``"tiny"``: the same block structure as SD 1.x (4 levels, 2 resnets per level, cross-attention in levels 0-2,
  VAE x8) with small channels; its state dicts convert to and from CompVis keys exactly like SD 1.x.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"

Size = Literal["sd1", "tiny"]

SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def unet_config(size: Size = "sd1") -> dict:
    """Config of the SD 1.x ``UNet2DConditionModel`` (``size="tiny"``: same layout, small channels)."""
    config = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }
    if size == "tiny":
        config.update(sample_size=8, block_out_channels=[32, 32, 64, 64], cross_attention_dim=32)
    return config


def vae_config(size: Size = "sd1") -> dict:
    """Config of the SD 1.x ``AutoencoderKL`` (x8 downsampling, 4 latent channels, scaling 0.18215)."""
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    if size == "tiny":
        config.update(block_out_channels=[32, 32, 64, 64], sample_size=64)
    return config


def text_encoder_config(size: Size = "sd1") -> dict:
    """Config of SD 1.x's CLIP ViT-L/14 text encoder (legacy token ids bos/pad/eos = 0/1/2, as in SD 1.4)."""
    config = {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
    }
    if size == "tiny":
        config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=32)
    return config


def load_tokenizer(path: str | os.PathLike | None = None):
    """The SD 1.x CLIP tokenizer from the files shipped with the package (or from ``path``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path or TOKENIZER_DIR), model_max_length=77)


def make_scheduler(config: dict | None = None):
    """A ``DDIMScheduler`` with SD's noise schedule, whatever scheduler a loaded folder came with.

    ``clip_sample``, ``set_alpha_to_one`` and ``steps_offset`` are always forced to SD's values: a DDIM built
    from a PNDM config would otherwise clip x0 to [-1, 1] and ruin inversion.
    """
    from diffusers import DDIMScheduler

    base = dict(SCHEDULER_CONFIG)
    if config:
        for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type", "trained_betas"):
            if key in config and config[key] is not None:
                base[key] = config[key]
    base.pop("_class_name", None)
    return DDIMScheduler(**base)


def build_components(size: Size = "sd1", *, seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, meta: bool = False) -> dict:
    """Random-weight SD 1.x components: ``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}``.

    Used by tests (``size="tiny"``) and benchmarks (``size="sd1"``). ``meta=True`` builds without allocating
    weights (for shape and FLOP inspection).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if meta:
        from accelerate import init_empty_weights

        with init_empty_weights():
            unet = UNet2DConditionModel(**unet_config(size))
            vae = AutoencoderKL(**vae_config(size))
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(size)))
    else:
        with torch.device(device):
            unet = UNet2DConditionModel(**unet_config(size))
            vae = AutoencoderKL(**vae_config(size))
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(size)))
        if dtype != torch.float32:
            unet, vae, text_encoder = (m.to(dtype=dtype) for m in (unet, vae, text_encoder))
    unet, vae, text_encoder = (m.eval().requires_grad_(False) for m in (unet, vae, text_encoder))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": load_tokenizer(),
            "scheduler": make_scheduler()}


def write_config_folder(folder: str | os.PathLike, size: Size = "sd1") -> Path:
    """Write a weight-less diffusers config folder (``model_index.json``, component configs, tokenizer).

    ``StableDiffusionPipeline.from_single_file(ckpt, config=folder, local_files_only=True)`` then needs no hub.
    """
    from transformers import CLIPTextConfig

    folder = Path(folder)
    for sub in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet_config(size)}, indent=2))
    (folder / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **vae_config(size)}, indent=2))
    CLIPTextConfig(**text_encoder_config(size), architectures=["CLIPTextModel"]).save_pretrained(folder / "text_encoder")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    for name in os.listdir(TOKENIZER_DIR):
        (folder / "tokenizer" / name).write_bytes((TOKENIZER_DIR / name).read_bytes())
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return folder
