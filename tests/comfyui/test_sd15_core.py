"""Our files in ComfyUI core, in this process: an SD 1.5-sized checkpoint written by the engine loads with core's
CheckpointLoaderSimple, and a LoRA trained by the engine loads with core's LoraLoader with zero unloaded keys and
the engine's numerical effect. Also: the LATENT hand-off of DDIM Invert matches ComfyUI's own noise convention.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch

from comfy_testing import SD15_CKPT, SD15_LORA, load_node_helper, release_memory

# 16 transformer blocks (input_blocks 1,2,4,5,7,8; middle_block; output_blocks 3..11) x attn1/attn2 x q/k/v/out
ATTENTION_WEIGHT = re.compile(r"diffusion_model\.(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)"
                              r"\.transformer_blocks\.0\.attn[12]\.to_(q|k|v|out\.0)\.weight")


@pytest.fixture(scope="module")
def core_sd15(sd15_assets, comfy_inprocess):
    """``(MODEL, CLIP, VAE)`` from core's CheckpointLoaderSimple; unloaded and freed after this module."""
    nodes, mm = comfy_inprocess.nodes, comfy_inprocess.mm
    loaded = nodes.CheckpointLoaderSimple().load_checkpoint(SD15_CKPT)
    yield loaded
    del loaded
    mm.unload_all_models()
    release_memory()


def _unet_output(mm, patcher, assets) -> torch.Tensor:
    """The LDM UNet of ``patcher`` (its patches applied by ComfyUI's model management) on the engine's input."""
    mm.load_models_gpu([patcher], force_full_load=True)
    unet = patcher.model.diffusion_model
    with torch.no_grad():
        return unet(assets.x, timesteps=torch.tensor([float(assets.t)]), context=assets.cond).float()


def test_memora_lora_in_core_loraloader(core_sd15, sd15_assets, comfy_inprocess, caplog):
    nodes, mm = comfy_inprocess.nodes, comfy_inprocess.mm
    model, clip, _ = core_sd15
    assert type(model.model.model_config).__name__ == "SD15"  # ComfyUI recognised our checkpoint as SD 1.5

    caplog.set_level(logging.WARNING)  # comfy.lora logs unloaded keys on the root logger at WARNING
    caplog.clear()
    model_lora, clip_lora = nodes.LoraLoader().load_lora(model, clip, SD15_LORA, 1.0, 1.0)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "lora key not loaded" in m or m.startswith("NOT LOADED")], messages

    patched = sorted(model_lora.patches)
    assert len(patched) == 16 * 2 * 4 == 128
    assert all(ATTENTION_WEIGHT.fullmatch(k) for k in patched), [k for k in patched if not ATTENTION_WEIGHT.fullmatch(k)]
    assert len(clip_lora.patcher.patches) == 0  # a UNet-only LoRA

    out_base = _unet_output(mm, model, sd15_assets)
    out_lora = _unet_output(mm, model_lora, sd15_assets)
    mm.unload_all_models()
    scale = sd15_assets.eps_base.abs().max().item()
    # the same UNet as the engine's (weights: the fp16 file, both run in fp32)
    assert (out_base - sd15_assets.eps_base).abs().max().item() < 1e-3 * scale
    # the LoRA has a real effect, and ComfyUI's patched weights reproduce the engine's adapter
    delta_engine = sd15_assets.eps_lora - sd15_assets.eps_base
    delta_comfy = out_lora - out_base
    assert delta_engine.abs().max().item() > 1e-2 * scale
    assert (delta_comfy - delta_engine).abs().max().item() < 1e-2 * delta_engine.abs().max().item()
    assert (out_lora - sd15_assets.eps_lora).abs().max().item() < 1e-3 * scale


@pytest.mark.parametrize("t", [1, 261, 681, 999])
def test_inverted_latent_matches_comfy_noise_convention(core_sd15, t):
    """DDIM Invert's LATENT output (nodes/convert.py) is what ComfyUI's samplers expect for a noisy latent: after
    ComfyUI's ``process_latent_in`` it is ``x0 + sigma * eps`` with ComfyUI's own sigma for that timestep."""
    from memora.sd1 import make_scheduler

    convert = load_node_helper("convert")
    base_model = core_sd15[0].model
    sampling = base_model.model_sampling
    abar = float(make_scheduler().alphas_cumprod[t])
    sigma_comfy = float(sampling.sigma(torch.tensor(float(t))))
    assert convert.sigma_of(abar) == pytest.approx(sigma_comfy, rel=1e-4)

    g = torch.Generator().manual_seed(t)
    x0, eps = torch.randn(2, 1, 4, 8, 8, generator=g, dtype=torch.float64)  # two [1, 4, 8, 8]
    x_t = (abar ** 0.5 * x0 + (1 - abar) ** 0.5 * eps).float()
    latent = convert.noisy_latent_to_comfy(x_t, abar, 0.18215)
    state = base_model.process_latent_in(latent["samples"]).double()  # what the sampler works on
    expected = sampling.noise_scaling(torch.tensor(sigma_comfy, dtype=torch.float64), eps, x0)
    assert torch.allclose(state, expected, rtol=0, atol=1e-4 * (1 + sigma_comfy))
    # and ComfyUI's EPS denoiser recovers x0 from it given the true noise
    denoised = sampling.calculate_denoised(torch.tensor([sigma_comfy], dtype=torch.float64), eps, state)
    assert torch.allclose(denoised, x0, rtol=0, atol=1e-4 * (1 + sigma_comfy))
