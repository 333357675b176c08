"""DDIM inversion of image latents and their regeneration, as MemoRa builds its training set.

MemoRa encodes a few images of the erased concept, DDIM-inverts them with the *unlearned* model part of the way
towards noise (``start_step`` of ``steps``), slerps between the inverted latents (``memora.interpolation``) and
regenerates them with the same model from that depth. This module does the inversion and the regeneration.

Two modes, chosen by ``faithful``:

``faithful=True`` (the reference, gmum/MemoRa ``src/utils/latent_iversion.py``, itself the Hugging Face
diffusion-models course code), with ``stride = num_train_timesteps // steps`` (1000 // 50 = 20 for SD) and
``T = DDIMScheduler.timesteps`` (981, 961, ..., 1 for 50 steps):

- inversion: ascending ``A = reversed(T)``; for ``i = 1, 2, ...``: ``t = A[i]``, ``a_cur = alpha[max(0, t - stride)]``,
  ``a_next = alpha[t]``, ``eps = eps_cfg(x, t)`` (the UNet is evaluated at the *target* level ``t``),
  ``x = (x - sqrt(1 - a_cur) eps) sqrt(a_next) / sqrt(a_cur) + sqrt(1 - a_next) eps``. The reference keeps the
  ``steps - 2`` latents of ``i = 1 .. steps - 2`` and takes ``intermediates[-(start_step + 1)]``, the latent at
  ``A[steps - 2 - start_step]``; only the ``steps - 2 - start_step`` steps needed to reach it are run here.
- regeneration: for ``i = start_step .. steps - 1``: ``t = T[i]``, ``a_t = alpha[t]``,
  ``a_prev = alpha[max(1, t - stride)]``, ``x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)``,
  ``x = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``. It starts at ``T[start_step]``, one level *above* the level the
  latent was inverted to (50 steps, start_step 15: inverted to t=661, regenerated from t=681; an off-by-one
  inherited from the course code). The last step (t=1 -> 1) only re-mixes x0 and eps at the same level, so the
  result stays at t=1 (alpha ~0.999 for SD).
- valid ``start_step``: ``0 .. steps - 3``.

``faithful=False`` (exact, textbook DDIM inversion; what diffusers' ``DDIMInverseScheduler`` + ``DDIMScheduler``
do, with eta 0 and no clipping):

- inversion: for ``t`` in ``A[0 .. steps - 1 - start_step]``: ``a_from = alpha[t - stride]`` (the scheduler's
  ``final_alpha_cumprod`` when ``t - stride < 0``, i.e. the clean latent), ``a_to = alpha[t]``, the same DDIM move
  with ``eps = eps_cfg(x, t)``. It ends exactly at ``T[start_step]``, where regeneration starts.
- regeneration: ``DDIMScheduler.step`` (eta 0) for ``t`` in ``T[start_step:]``, down to ``final_alpha_cumprod``.
- valid ``start_step``: ``0 .. steps - 1``.

Every step is one "DDIM move" of a batch of latents from noise level ``a_from`` to ``a_to`` with one
classifier-free-guided noise prediction at UNet timestep ``t``; the two modes differ only in the list of
``(t, a_from, a_to)`` they walk through. Latents are *scaled* latents ``[B, C, h, w]`` (``model.encode_images``).
The noise schedule is the model's own (``model.scheduler.alphas_cumprod``), never SD's hard-coded; the model's
scheduler is never mutated. The running latents are kept in float32 whatever the model dtype; the UNet sees the
model dtype and the results are returned in it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from .errors import InputError
from .model import DiffusionModel, unet_eps
from .progress import ProgressCallback, report


@dataclass
class InvertedLatents:
    """Latents inverted part of the way to noise, with the schedule they belong to.

    ``latents``: scaled latents ``[B, C, h, w]`` in the model dtype, at noise level ``inverted_timestep``.
    ``timestep`` is where regeneration starts (``DDIMScheduler.timesteps[start_step]`` for ``steps`` steps);
    it equals ``inverted_timestep`` in exact mode and is one DDIM step above it in faithful mode.
    """

    latents: torch.Tensor
    steps: int
    start_step: int
    faithful: bool
    timestep: int
    inverted_timestep: int
    prompt: str
    guidance: float = 7.5  # the guidance the inversion used
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.latents) or self.latents.ndim != 4:
            shape = tuple(self.latents.shape) if torch.is_tensor(self.latents) else type(self.latents).__name__
            raise InputError(f"inverted latents must be a [B, C, h, w] tensor, got {shape}")

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def with_latents(self, latents: torch.Tensor) -> "InvertedLatents":
        """The same schedule and depth with new latents ``[N, C, h, w]`` (e.g. slerped ones)."""
        if not torch.is_tensor(latents) or latents.ndim != 4 or latents.shape[1:] != self.latents.shape[1:]:
            shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise InputError(f"new latents must have shape [N, {', '.join(map(str, self.latents.shape[1:]))}] "
                             f"like the inverted ones, got {shape}")
        return replace(self, latents=latents)

    def select(self, indices: int | Sequence[int] | torch.Tensor) -> "InvertedLatents":
        """The latents at ``indices`` (in that order), same schedule."""
        if isinstance(indices, int):
            indices = [indices]
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = len(self)
        bad = [int(i) for i in idx if not -n <= int(i) < n]
        if bad:
            raise InputError(f"indices {bad} out of range: there are {n} inverted latents (valid 0..{n - 1})")
        return replace(self, latents=self.latents[idx.to(self.latents.device)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (no tensors)."""
        return {
            "count": len(self),
            "latent_shape": list(self.latents.shape[1:]),
            "dtype": str(self.latents.dtype).replace("torch.", ""),
            "steps": self.steps,
            "start_step": self.start_step,
            "mode": "faithful" if self.faithful else "exact",
            "faithful": self.faithful,
            "timestep": self.timestep,
            "inverted_timestep": self.inverted_timestep,
            "regeneration_steps": self.steps - self.start_step,
            "prompt": self.prompt,
            "guidance": self.guidance,
            "negative_prompt": self.negative_prompt,
        }


# --------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class _Step:
    """One DDIM move: UNet at timestep ``t``; latents go from noise level ``a_from`` to ``a_to`` (alpha-bar).

    ``a_from``/``a_to`` are 0-d float32 tensors (the scheduler's own values). ``rescale_form`` selects the
    reference inversion's arrangement of the same update (see ``_ddim_move``).
    """

    t: int
    a_from: torch.Tensor
    a_to: torch.Tensor
    rescale_form: bool = False


@dataclass(frozen=True)
class _Schedule:
    timesteps: list[int]  # sampling order, descending: DDIMScheduler.timesteps for ``steps`` steps
    alphas: torch.Tensor  # alphas_cumprod, float32 on the CPU
    final_alpha: torch.Tensor  # DDIMScheduler.final_alpha_cumprod (the clean end), 0-d float32
    stride: int  # num_train_timesteps // steps

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas[t]


def _schedule(model: DiffusionModel, steps: int) -> _Schedule:
    """The DDIM timesteps for ``steps`` steps, from a copy of the model's scheduler (which is left untouched)."""
    from diffusers import DDIMScheduler

    config = model.scheduler.config
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise InputError(f"the model's scheduler predicts {config.get('prediction_type')!r}; DDIM inversion here "
                         "supports epsilon-prediction models (SD 1.x) only")
    sched = DDIMScheduler.from_config(config)
    try:
        sched.set_timesteps(steps)
    except ValueError as e:
        raise InputError(f"cannot make a {steps}-step DDIM schedule for this model: {e}") from None
    timesteps = [int(t) for t in sched.timesteps]
    if len(set(timesteps)) != len(timesteps):
        raise InputError(f"the {steps}-step DDIM schedule has repeated timesteps ({timesteps[:6]}...); "
                         "use fewer steps")
    alphas = model.scheduler.alphas_cumprod.detach().to("cpu", torch.float32)
    final = torch.as_tensor(sched.final_alpha_cumprod).detach().to("cpu", torch.float32)
    return _Schedule(timesteps=timesteps, alphas=alphas, final_alpha=final,
                     stride=int(config["num_train_timesteps"]) // steps)


def _check_depth(steps: int, start_step: int, faithful: bool) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise InputError(f"steps must be an integer >= 2 (the paper uses 50), got {steps!r}")
    last = steps - 3 if faithful else steps - 1
    if last < 0:
        raise InputError(f"faithful inversion needs steps >= 3 (it skips the first and last of the reference's "
                         f"steps), got steps={steps}; use more steps or faithful=False")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step <= last:
        mode = "faithful" if faithful else "exact"
        raise InputError(f"start_step={start_step!r} is out of range for {steps} steps in {mode} mode: valid "
                         f"0..{last} (0 inverts deepest; the paper uses 15 of 50)")


def _inversion_plan(s: _Schedule, steps: int, start_step: int, faithful: bool) -> tuple[list[_Step], int]:
    """Steps from the clean latent up to the inverted level, and that level's timestep."""
    ascending = s.timesteps[::-1]
    if faithful:
        n = steps - 2 - start_step  # reference loop i = 1 .. n; intermediates[-(start_step + 1)] is its last
        plan = [_Step(t, s.alpha(max(0, t - s.stride)), s.alpha(t), rescale_form=True) for t in ascending[1:n + 1]]
        return plan, ascending[n]
    n = steps - start_step
    plan = [_Step(t, s.alpha(t - s.stride) if t - s.stride >= 0 else s.final_alpha, s.alpha(t))
            for t in ascending[:n]]
    return plan, ascending[n - 1]


def _regeneration_plan(s: _Schedule, start_step: int, faithful: bool) -> list[_Step]:
    """Steps from ``timesteps[start_step]`` down to the clean end."""
    plan = []
    for t in s.timesteps[start_step:]:
        prev = t - s.stride
        if faithful:
            a_prev = s.alpha(max(1, prev))
        else:
            a_prev = s.alpha(prev) if prev >= 0 else s.final_alpha
        plan.append(_Step(t, s.alpha(t), a_prev))
    return plan


# --------------------------------------------------------------------------------------------- the loop
def _ddim_move(x: torch.Tensor, eps: torch.Tensor, step: _Step) -> torch.Tensor:
    """Deterministic DDIM update of float32 ``x`` from alpha-bar ``a_from`` to ``a_to`` with noise ``eps``.

    ``x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from)``, ``x' = sqrt(a_to) x0 + sqrt(1 - a_to) eps``. The
    coefficients are float32 and the operations come in the order the reference (``rescale_form``:
    ``(x - sqrt(1 - a_from) eps) * (sqrt(a_to) / sqrt(a_from)) + sqrt(1 - a_to) eps``) and diffusers'
    schedulers use, so that fp32 results match them bit for bit: a random or weakly trained UNet amplifies
    last-bit differences over tens of guided steps.
    """
    sqrt_a_from, sqrt_1m_from = step.a_from.sqrt(), (1 - step.a_from).sqrt()
    sqrt_a_to, sqrt_1m_to = step.a_to.sqrt(), (1 - step.a_to).sqrt()
    if step.rescale_form:
        return (x - sqrt_1m_from.item() * eps) * (sqrt_a_to / sqrt_a_from).item() + sqrt_1m_to.item() * eps
    x0 = (x - sqrt_1m_from.item() * eps) / sqrt_a_from.item()
    return sqrt_a_to.item() * x0 + sqrt_1m_to.item() * eps


def _check_latents(model: DiffusionModel, latents: torch.Tensor) -> None:
    if not torch.is_tensor(latents) or latents.ndim != 4:
        shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
        raise InputError(f"expected scaled latents [B, C, h, w] (from model.encode_images), got {shape}")
    if latents.shape[0] == 0:
        raise InputError("no latents given: the batch is empty")
    if latents.shape[1] != model.latent_channels:
        raise InputError(f"latents have {latents.shape[1]} channels, the model's UNet takes "
                         f"{model.latent_channels}; encode the images with this model's VAE")


def _conditioning(model: DiffusionModel, prompt: str, negative_prompt: str, guidance: float):
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be one string (used for every image), got {type(prompt).__name__}")
    cond = model.encode_prompt(prompt)  # [1, 77, D]
    uncond = None if guidance == 1.0 else model.encode_prompt(negative_prompt)
    return cond, uncond


def _run(model: DiffusionModel, latents: torch.Tensor, plan: list[_Step], cond, uncond, guidance: float,
         batch_size: int, phase: str, callback: ProgressCallback | None) -> torch.Tensor:
    """Walk ``plan`` for all latents: steps outside, image chunks of ``batch_size`` inside (one CFG UNet call each)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    # a fresh contiguous float32 copy: the VAE may hand over channels-last latents, and the memory layout
    # changes which convolution kernels run (and so the last bits of every result)
    x = latents.to(device=model.device, dtype=torch.float32).clone(memory_format=torch.contiguous_format)
    total = len(plan)
    for i, step in enumerate(plan):
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            eps = unet_eps(model, chunk.to(model.dtype), step.t, cond, uncond, guidance).float()
            x[start:start + batch_size] = _ddim_move(chunk, eps, step)
        report(callback, phase, i + 1, total, info={"timestep": step.t, "images": int(x.shape[0])})
    return x.to(model.dtype)


@torch.no_grad()
def invert(model: DiffusionModel, latents: torch.Tensor, prompt: str, *, steps: int = 50, start_step: int = 15,
           guidance: float = 7.5, negative_prompt: str = "", faithful: bool = True, batch_size: int = 8,
           callback: ProgressCallback | None = None) -> InvertedLatents:
    """DDIM-invert scaled latents ``[B, C, h, w]`` to depth ``start_step`` of a ``steps``-step schedule.

    ``guidance`` is the classifier-free guidance of the noise predictions (the reference inverts with 7.5;
    1.0 gives the most accurate inversion), with ``negative_prompt`` as the unconditional prompt. Images are
    processed together in chunks of ``batch_size`` per UNet call. ``callback`` gets one ``"invert"`` event per
    step. See the module docstring for the two modes. Returns ``InvertedLatents`` (latents in the model dtype).
    """
    _check_latents(model, latents)
    _check_depth(steps, start_step, faithful)
    sched = _schedule(model, steps)
    plan, inverted_timestep = _inversion_plan(sched, steps, start_step, faithful)
    cond, uncond = _conditioning(model, prompt, negative_prompt, guidance)
    x = _run(model, latents, plan, cond, uncond, guidance, batch_size, "invert", callback)
    return InvertedLatents(latents=x, steps=steps, start_step=start_step, faithful=faithful,
                           timestep=sched.timesteps[start_step], inverted_timestep=inverted_timestep,
                           prompt=prompt, guidance=float(guidance), negative_prompt=negative_prompt)


@torch.no_grad()
def regenerate(model: DiffusionModel, inverted: InvertedLatents, prompt: str, *, guidance: float = 7.5,
               negative_prompt: str = "", batch_size: int = 8,
               callback: ProgressCallback | None = None) -> torch.Tensor:
    """Denoise inverted (or slerped) latents from ``inverted.timestep`` to the clean end.

    Runs the last ``steps - start_step`` steps of the ``inverted.steps``-step DDIM schedule (eta 0) with
    classifier-free guidance ``guidance``, in the mode the latents were inverted with. ``callback`` gets one
    ``"regenerate"`` event per step. Returns scaled latents ``[B, C, h, w]`` in the model dtype (at t=1 in
    faithful mode, at the scheduler's final alpha in exact mode): decode them with ``model.decode_latents``.
    """
    if not isinstance(inverted, InvertedLatents):
        raise InputError(f"regenerate takes the InvertedLatents that invert() returns, got {type(inverted).__name__}")
    _check_latents(model, inverted.latents)
    _check_depth(inverted.steps, inverted.start_step, inverted.faithful)
    sched = _schedule(model, inverted.steps)
    plan = _regeneration_plan(sched, inverted.start_step, inverted.faithful)
    cond, uncond = _conditioning(model, prompt, negative_prompt, guidance)
    return _run(model, inverted.latents, plan, cond, uncond, guidance, batch_size, "regenerate", callback)
