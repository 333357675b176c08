"""Text-to-image generation for evaluation: the MemoRa / UnlearnDiffAtk protocol (LMS, 50 steps, per-prompt seed
and guidance, CPU-drawn initial noise).

The loop is diffusers' ``StableDiffusionPipeline.__call__`` written out: per-prompt text embeddings, initial noise
``[C, H/f, W/f]`` per image from ``torch.Generator("cpu").manual_seed(seed)`` in float32 (the same on every
device), ``latents * init_noise_sigma``, then for every timestep ``scale_model_input`` -> classifier-free guided
noise prediction (one batched UNet call for both branches) -> ``scheduler.step``. Latents and the scheduler maths
stay in float32 whatever the model dtype; only the UNet input is cast.

A custom noise prediction plugs in through ``eps_fn(latents, t, cond, uncond, guidance) -> eps`` (AutoMemoRa in
``memora.guidance``): ``latents`` are the scheduler-scaled UNet inputs ``[b, C, h, w]`` in the model dtype, ``t``
the timestep, ``cond``/``uncond`` ``[b, 77, D]`` and ``guidance`` a float32 tensor ``[b, 1, 1, 1]``.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch

from .errors import InputError
from .model import DiffusionModel
from .progress import ProgressCallback, report

SchedulerName = Literal["lms", "ddim", "euler"]
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Timestep layouts per sampler. LMS (and Euler) as the evaluation protocol builds them: the reference's
# ``LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")`` uses the class
# defaults "linspace" / offset 0. DDIM keeps the model's own configuration (SD: "leading", offset 1).
_SCHEDULER_OVERRIDES = {
    "lms": {"timestep_spacing": "linspace", "steps_offset": 0},
    "euler": {"timestep_spacing": "linspace", "steps_offset": 0},
    "ddim": {},
}


def _lms_class():
    # The module itself, not ``diffusers.LMSDiscreteScheduler``: without scipy the top-level name is a placeholder.
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler

    class ExactLMSDiscreteScheduler(LMSDiscreteScheduler):
        """diffusers' LMS with its linear-multistep coefficients integrated exactly instead of with scipy.

        The integrand is a Lagrange basis polynomial of degree ``order - 1`` in sigma; integrating it in closed form
        (float64) gives what ``scipy.integrate.quad`` approximates, and drops the scipy dependency.
        """

        def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
            sigmas = self.sigmas
            poly = np.poly1d([1.0])
            s_j = float(sigmas[t - current_order])
            for k in range(order):
                if k == current_order:
                    continue
                s_k = float(sigmas[t - k])
                poly = poly * np.poly1d([1.0, -s_k]) / (s_j - s_k)
            antiderivative = poly.integ()
            return float(antiderivative(float(sigmas[t + 1])) - antiderivative(float(sigmas[t])))

    return ExactLMSDiscreteScheduler


def make_sampling_scheduler(model: DiffusionModel, name: SchedulerName = "lms"):
    """A fresh sampler carrying ``model.scheduler``'s noise schedule (the model's scheduler is never mutated).

    ``"lms"``: LMS with the evaluation protocol's timestep layout; ``"ddim"``: DDIM as configured in the model
    (eta 0); ``"euler"``: Euler discrete.
    """
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    classes = {"lms": _lms_class(), "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
    if name not in classes:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(classes)}")
    config = dict(model.scheduler.config)
    config.update(_SCHEDULER_OVERRIDES[name])
    return classes[name].from_config(config)


def initial_noise(model: DiffusionModel, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Per-image initial noise ``[B, C, H/f, W/f]`` float32 on the CPU: ``torch.randn`` from
    ``torch.Generator("cpu").manual_seed(seed)`` for each seed (as diffusers does with a list of CPU generators)."""
    _, c, h, w = model.latent_shape(1, height, width)
    noise = [torch.randn((1, c, h, w), generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
             for s in seeds]
    return torch.cat(noise)


def cfg_eps(model: DiffusionModel, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Classifier-free guided noise ``eps_u + g * (eps_c - eps_u)`` in one batched UNet call, float32.

    ``latents`` ``[b, C, h, w]``, ``cond``/``uncond`` ``[b, 77, D]``, ``guidance`` ``[b, 1, 1, 1]`` (or a float).
    Samples whose guidance is 1 still run both branches (the batch is evaluated as one call).
    """
    eps_u, eps_c = model.unet(torch.cat([latents, latents]), t,
                              encoder_hidden_states=torch.cat([uncond, cond])).sample.float().chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def generate(model: DiffusionModel, prompts: str | Sequence[str], *, seeds: int | Sequence[int],
             guidance: float | Sequence[float] = 7.5, steps: int = 50, scheduler: SchedulerName = "lms",
             negative_prompt: str | Sequence[str] = "", height: Optional[int] = None, width: Optional[int] = None,
             eps_fn: Optional[EpsFn] = None, batch_size: int = 4, latents: Optional[torch.Tensor] = None,
             callback: ProgressCallback | None = None) -> torch.Tensor:
    """Generate one image per prompt; returns ``[B, 3, H, W]`` float32 in 0..1 on the CPU.

    Args:
        prompts: ``B`` prompts (a single string is one prompt).
        seeds: one seed per prompt (an int is used for every prompt).
        guidance: the CFG scale, one float or one per prompt.
        steps: denoising steps. scheduler: ``"lms"`` (the evaluation protocol), ``"ddim"`` or ``"euler"``.
        negative_prompt: the unconditional prompt ("" as in the protocol), one string or one per prompt.
        height, width: pixels (default ``model.default_resolution``).
        eps_fn: replaces the guided noise prediction (see the module docstring).
        batch_size: images per chunk (each chunk runs the UNet on ``2 * batch_size`` inputs).
        latents: optional initial noise ``[B, C, h, w]`` replacing the seeded noise (unscaled, sigma 1).
        callback: ``report(callback, "generate", step, total)`` per denoising step over all chunks.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompts)
    if n == 0:
        raise InputError("no prompts given")
    seeds = [int(seeds)] * n if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    guidances = [float(guidance)] * n if isinstance(guidance, (int, float)) else [float(g) for g in guidance]
    negatives = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
    for label, values in (("seeds", seeds), ("guidance values", guidances), ("negative prompts", negatives)):
        if len(values) != n:
            raise InputError(f"{n} prompts but {len(values)} {label}; give one per prompt (or a single value)")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    height = int(height or model.default_resolution)
    width = int(width or model.default_resolution)
    if latents is None:
        noise = initial_noise(model, seeds, height, width)
    else:
        expected = model.latent_shape(n, height, width)
        if tuple(latents.shape) != expected:
            raise InputError(f"latents have shape {tuple(latents.shape)}, expected {expected}")
        noise = latents.detach().float().cpu()
    make_scheduler = lambda: make_sampling_scheduler(model, scheduler)  # noqa: E731 (one fresh scheduler per chunk)

    device, dtype = model.device, model.dtype
    chunks = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    total = len(chunks) * steps
    done = 0
    images = []
    for chunk in chunks:
        idx = list(chunk)
        cond = model.encode_prompt([prompts[i] for i in idx])
        uncond = model.encode_prompt([negatives[i] for i in idx])
        g = torch.tensor([guidances[i] for i in idx], device=device, dtype=torch.float32).view(-1, 1, 1, 1)
        sched = make_scheduler()
        sched.set_timesteps(steps, device=device)
        x = noise[idx].to(device) * sched.init_noise_sigma  # float32
        for t in sched.timesteps:
            model_input = sched.scale_model_input(x, t).to(dtype)
            if eps_fn is None:
                eps = cfg_eps(model, model_input, t, cond, uncond, g)
            else:
                eps = eps_fn(model_input, t, cond, uncond, g)
            x = sched.step(eps.float(), t, x, return_dict=False)[0]
            done += 1
            report(callback, "generate", done, total, info={"timestep": int(t)})
        images.append(model.decode_latents(x.to(dtype)).float().cpu())
    return torch.cat(images)
