"""The ComfyUI-free helpers of the nodes: ``nodes/convert.py`` (IMAGE / LATENT layouts) and ``nodes/preview.py``.

Both files import nothing from ComfyUI, so they are tested here without it. They are loaded from their paths
(``importlib.util.spec_from_file_location``) rather than with ``import nodes``: when ComfyUI is on ``sys.path``,
``import nodes`` is ComfyUI's own ``nodes.py``, and ``nodes/__init__.py`` belongs to the pack, whose other
modules import ``comfy_api``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

NODES_DIR = Path(__file__).resolve().parents[1] / "nodes"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"memora_test_nodes_{name}", NODES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = _load("convert")
preview = _load("preview")


# --------------------------------------------------------------------------------------------------- IMAGE
def test_image_round_trip_is_exact_and_copies():
    g = torch.Generator().manual_seed(0)
    comfy_image = torch.rand(3, 24, 40, 3, generator=g)  # ComfyUI IMAGE [B, H, W, C]
    before = comfy_image.clone()

    engine = convert.image_to_engine(comfy_image)
    assert engine.shape == (3, 3, 24, 40) and engine.dtype == torch.float32
    assert torch.equal(engine[1, 2], comfy_image[1, :, :, 2])  # channel c of pixel (y, x) stays put
    engine.add_(1.0)  # changing the engine copy must not touch the node input (ComfyUI shares outputs)
    assert torch.equal(comfy_image, before)

    back = convert.image_to_comfy(convert.image_to_engine(comfy_image))
    assert back.shape == comfy_image.shape and back.is_contiguous() and back.device.type == "cpu"
    assert torch.equal(back, comfy_image)


def test_image_to_engine_accepts_one_unbatched_image_and_half_precision():
    image = torch.rand(16, 8, 3).half()
    engine = convert.image_to_engine(image)
    assert engine.shape == (1, 3, 16, 8) and engine.dtype == torch.float32
    assert torch.equal(engine[0].movedim(0, -1), image.float())


def test_image_to_comfy_clamps_detaches_and_casts():
    x = torch.tensor([-0.5, 0.25, 1.5]).view(1, 3, 1, 1).double().requires_grad_(True)
    out = convert.image_to_comfy(x)
    assert out.shape == (1, 1, 1, 3) and out.dtype == torch.float32 and not out.requires_grad
    assert out.flatten().tolist() == [0.0, 0.25, 1.0]


# -------------------------------------------------------------------------------------------------- LATENT
@pytest.fixture(scope="module")
def alphas_cumprod() -> torch.Tensor:
    """SD 1.x's training noise schedule (scaled_linear 0.00085 .. 0.012, 1000 steps), float64."""
    from memora.sd1 import make_scheduler

    return make_scheduler().alphas_cumprod.double()


@pytest.mark.parametrize("t", [1, 261, 681, 999])
def test_noisy_latent_is_x0_plus_sigma_eps_in_comfy_scaling(alphas_cumprod, t):
    """A diffusers latent x_t = sqrt(abar) x0 + sqrt(1 - abar) eps becomes ComfyUI's EPS sampler state
    x0 + sigma * eps (after ComfyUI's own ``process_latent_in``, i.e. times the scaling factor)."""
    scaling = 0.18215
    g = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)  # scaled clean latents
    eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    abar = float(alphas_cumprod[t])
    x_t = (math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps).float()
    before = x_t.clone()

    latent = convert.noisy_latent_to_comfy(x_t, abar, scaling)
    samples = latent["samples"]
    assert set(latent) == {"samples"} and samples.dtype == torch.float32 and samples.shape == x_t.shape
    assert torch.equal(x_t, before)  # the input is not changed
    # the formula itself, and the equivalent form x_t * sqrt(1 + sigma^2) / scaling
    assert torch.allclose(samples, x_t / math.sqrt(abar) / scaling, rtol=1e-6, atol=0)
    sigma = convert.sigma_of(abar)
    assert torch.allclose(samples, x_t * math.sqrt(1 + sigma ** 2) / scaling, rtol=1e-5, atol=0)
    # ComfyUI's EPS convention (comfy/model_sampling.py EPS.noise_scaling): state = x0 + sigma * eps
    state = samples.double() * scaling
    assert torch.allclose(state, x0 + sigma * eps, rtol=0, atol=2e-5 * (1 + sigma))


def test_sigma_of_is_the_k_diffusion_sigma(alphas_cumprod):
    sigmas = torch.tensor([convert.sigma_of(float(a)) for a in alphas_cumprod], dtype=torch.float64)
    expected = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # k-diffusion / ComfyUI ModelSamplingDiscrete
    assert torch.allclose(sigmas, expected, rtol=1e-12, atol=0)
    # SD 1.x's well-known range: sigma_min ~ 0.0292, sigma_max ~ 14.6146
    assert sigmas[0].item() == pytest.approx(0.029168, rel=1e-3)
    assert sigmas[-1].item() == pytest.approx(14.6146, rel=1e-3)
    assert bool((sigmas[1:] > sigmas[:-1]).all())


def test_clean_latent_is_unscaled_for_comfy():
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).half()
    out = convert.clean_latent_to_comfy(latents, 0.18215)["samples"]
    assert out.dtype == torch.float32
    assert torch.allclose(out * 0.18215, latents.float(), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------------- preview
def _curve_pixels(image) -> int:
    """Pixels of the running-mean curve colour (20, 70, 160) and the point marker."""
    return sum(1 for p in image.getdata() if p == (20, 70, 160))


@pytest.mark.parametrize("losses", [[], [0.5], [0.3] * 7, [1.0 / (i + 1) + 0.01 * (i % 3) for i in range(500)]],
                         ids=["none", "one", "constant", "many"])
@pytest.mark.parametrize("size", [(384, 192), (200, 90)])
def test_loss_curve_image_has_the_requested_size(losses, size):
    image = preview.loss_curve_image(losses, 500, width=size[0], height=size[1])
    assert image.size == size and image.mode == "RGB"
    if losses:
        assert _curve_pixels(image) > 0
    else:
        assert _curve_pixels(image) == 0


def test_loss_curve_image_survives_non_finite_losses():
    """A fp16 run can produce inf/nan losses; the live preview must not crash the training node."""
    image = preview.loss_curve_image([1.0, float("nan"), float("inf"), 0.5], 10, width=120, height=80)
    assert image.size == (120, 80)


def test_loss_curve_uses_the_full_width_for_a_finished_run():
    losses = [1.0 - i / 100 for i in range(100)]
    image = preview.loss_curve_image(losses, 100, width=300, height=120)
    xs = [i % 300 for i, p in enumerate(image.getdata()) if p == (20, 70, 160)]
    assert min(xs) < 60 and max(xs) > 240
