"""Evaluation sampling (memora.sampling) against diffusers' StableDiffusionPipeline on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, write_random_lora

from memora.errors import InputError
from memora.lora import load_lora
from memora.sampling import cfg_eps, generate, initial_noise, make_sampling_scheduler

PROMPTS = ["a photo of the parachute", "a red square on a blue background"]
STEPS = 8


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(0)


@pytest.mark.parametrize("scheduler", ["ddim", "lms", "euler"])
def test_matches_diffusers_pipeline(model, scheduler):
    from diffusers import StableDiffusionPipeline

    seeds = [1805, 2821]
    ours = generate(model, PROMPTS, seeds=seeds, guidance=7.5, steps=STEPS, scheduler=scheduler)
    assert ours.shape == (2, 3, 64, 64) and ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert 0 <= ours.min() and ours.max() <= 1

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=make_sampling_scheduler(model, scheduler),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = initial_noise(model, seeds, 64, 64)
    ref = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, latents=latents, output_type="pt").images
    assert ref.shape == ours.shape
    assert (ours - ref.float().cpu()).abs().max() <= 1e-4
    # the noise is what diffusers draws from per-image CPU generators
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    assert torch.equal(latents, randn_tensor((2, 4, 8, 8), generator=generators, dtype=torch.float32))


def test_scheduler_layouts(model):
    lms = make_sampling_scheduler(model, "lms")
    lms.set_timesteps(50)
    assert lms.config.timestep_spacing == "linspace" and float(lms.timesteps[0]) == pytest.approx(999.0)
    ddim = make_sampling_scheduler(model, "ddim")
    ddim.set_timesteps(50)
    assert int(ddim.timesteps[0]) == 981 and int(ddim.timesteps[-1]) == 1  # SD's leading + offset 1
    assert ddim is not model.scheduler and lms.config.beta_schedule == model.scheduler.config.beta_schedule
    with pytest.raises(InputError, match="unknown scheduler"):
        make_sampling_scheduler(model, "pndm")


def test_lms_coefficients_are_exact(model):
    """Our closed-form LMS coefficients equal the integral diffusers computes (Simpson is exact for cubics)."""
    sched = make_sampling_scheduler(model, "lms")
    sched.set_timesteps(STEPS)
    sigmas = sched.sigmas.double().numpy()

    def diffusers_integrand(tau, order, t, current_order):  # diffusers' lms_derivative, verbatim maths
        prod = np.ones_like(tau)
        for k in range(order):
            if current_order == k:
                continue
            prod *= (tau - sigmas[t - k]) / (sigmas[t - current_order] - sigmas[t - k])
        return prod

    for t in range(3, STEPS):
        for order in (1, 2, 3, 4):
            for current in range(order):
                a, b = sigmas[t], sigmas[t + 1]
                x = np.linspace(a, b, 101)
                y = diffusers_integrand(x, order, t, current)
                h = (b - a) / 100
                simpson = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
                assert sched.get_lms_coefficient(order, t, current) == pytest.approx(simpson, rel=1e-9, abs=1e-12)
    try:
        import scipy  # noqa: F401
    except ImportError:
        return
    from diffusers import LMSDiscreteScheduler
    stock = LMSDiscreteScheduler.from_config(sched.config)
    stock.set_timesteps(STEPS)
    assert sched.get_lms_coefficient(4, 5, 2) == pytest.approx(stock.get_lms_coefficient(4, 5, 2), rel=1e-6)


def test_seeds_are_reproducible_and_distinct(model):
    noise = initial_noise(model, [7, 7, 8], 64, 64)
    assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert torch.equal(noise[2:], torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8)))
    a = generate(model, [PROMPTS[0]] * 3, seeds=[7, 7, 8], steps=4, scheduler="ddim", batch_size=2)
    b = generate(model, PROMPTS[0], seeds=7, steps=4, scheduler="ddim")
    assert torch.equal(a[0], a[1])
    assert (a[0] - a[2]).abs().max() > 1e-2
    assert (a[0] - b[0]).abs().max() <= 1e-4  # chunking does not change an image


def test_per_prompt_guidance_and_eps_fn(model):
    both = generate(model, PROMPTS, seeds=[3, 4], guidance=[1.0, 9.0], steps=4, scheduler="lms")
    first = generate(model, PROMPTS[0], seeds=3, guidance=1.0, steps=4, scheduler="lms")
    second = generate(model, PROMPTS[1], seeds=4, guidance=9.0, steps=4, scheduler="lms")
    assert (both[0] - first[0]).abs().max() <= 1e-5
    assert (both[1] - second[0]).abs().max() <= 1e-5
    other = generate(model, PROMPTS[1], seeds=4, guidance=1.0, steps=4, scheduler="lms")
    assert (other - second).abs().max() > 1e-3  # guidance matters

    calls = []

    def eps_fn(latents, t, cond, uncond, guidance):
        calls.append((tuple(latents.shape), tuple(guidance.flatten().tolist())))
        return cfg_eps(model, latents, t, cond, uncond, guidance)

    events = []
    custom = generate(model, PROMPTS, seeds=[3, 4], guidance=[1.0, 9.0], steps=4, scheduler="lms", eps_fn=eps_fn,
                      batch_size=1, callback=events.append)
    assert len(calls) == 8 and calls[0] == ((1, 4, 8, 8), (1.0,)) and calls[-1] == ((1, 4, 8, 8), (9.0,))
    assert (custom - both).abs().max() <= 1e-5
    assert [e.step for e in events] == list(range(1, 9)) and events[-1].total == 8


def test_lora_changes_output(model, tmp_path):
    model = model.clone()
    before = generate(model, PROMPTS[0], seeds=5, steps=4, scheduler="ddim")
    load_lora(model, write_random_lora(model, tmp_path / "r.safetensors", scale=0.5))
    after = generate(model, PROMPTS[0], seeds=5, steps=4, scheduler="ddim")
    assert (after - before).abs().max() > 1e-2


def test_input_checks(model):
    with pytest.raises(InputError, match="seeds"):
        generate(model, PROMPTS, seeds=[1], steps=2)
    with pytest.raises(InputError, match="guidance"):
        generate(model, PROMPTS, seeds=[1, 2], guidance=[7.5], steps=2)
    with pytest.raises(InputError, match="multiple of 8"):
        generate(model, PROMPTS[0], seeds=1, steps=2, height=60)
