"""Training recipes of the toy world (used by ``scripts/train_toy.py``; documented there with their wall times).

- ``train_diffusion``: the text-to-image model from scratch, UNet and text encoder jointly, epsilon-MSE on fresh
  procedural data every step, caption dropout 10 % (so classifier-free guidance works), EMA weights.
- ``train_detector``: the concept classifier (see ``detector.py``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..model import DiffusionModel
from ..progress import ProgressCallback, report
from . import data


@dataclass
class DiffusionTrainingConfig:
    """The toy model's recipe. Learning rate: linear warm-up, constant ``lr`` until ``decay_start``, then a cosine
    from ``lr_decay_from`` that would reach 0 at ``decay_start + decay_length`` (the prototype's two stages)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    decay_start: int = 1000
    lr_decay_from: float = 5e-4
    decay_length: int = 600
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_max_decay: float = 0.995
    shapes: tuple[str, ...] = data.SHAPES
    caption_probs: dict = field(default_factory=lambda: dict(data.DEFAULT_CAPTION_PROBS))
    texture_prob: float = 0.0
    model_seed: int = 0  # weight initialisation and noise/timestep draws
    data_seed: int = 1  # procedural data stream

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if step < self.decay_start:
            return self.lr
        frac = min(1.0, (step - self.decay_start) / self.decay_length)
        return self.lr_decay_from * 0.5 * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    for pe, pl in zip(ema.parameters(), live.parameters()):
        pe.lerp_(pl, 1 - decay)


def train_diffusion(config: DiffusionTrainingConfig, *, model: DiffusionModel | None = None,
                    callback: ProgressCallback | None = None, log_every: int = 50) -> tuple[DiffusionModel, dict]:
    """Train a toy model from scratch (or continue ``model``). Returns ``(ema_model, facts)``.

    The returned model holds the EMA weights, in eval mode with gradients off.
    """
    from . import model as toy_model

    model = model if model is not None else toy_model.build_model(config.model_seed)
    unet, text_encoder = model.unet, model.text_encoder
    ema_unet, ema_te = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    alphas_cumprod = model.scheduler.alphas_cumprod.to(torch.float32)
    num_t = int(model.scheduler.config.num_train_timesteps)
    data_gen = torch.Generator().manual_seed(config.data_seed)
    noise_gen = torch.Generator().manual_seed(config.model_seed)
    tokenizer = model.tokenizer
    losses: list[float] = []
    t0 = time.time()
    for step in range(config.steps):
        batch = data.make_batch(config.batch_size, data_gen, shapes=config.shapes,
                                caption_probs=config.caption_probs, texture_prob=config.texture_prob)
        x0 = batch.images * 2 - 1
        ids = tokenizer(batch.captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(x0.shape, generator=noise_gen)
        t = torch.randint(0, num_t, (x0.shape[0],), generator=noise_gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = config.lr_at(step)
        emb = text_encoder(ids)[0]
        loss = F.mse_loss(unet(xt, t, encoder_hidden_states=emb).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        decay = min(config.ema_max_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_te, text_encoder, decay)
        losses.append(loss.item())
        report(callback, "train toy model", step + 1, config.steps, loss=losses[-1])
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"step {step + 1}/{config.steps} loss {recent:.4f} lr {config.lr_at(step):.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
    model.unet, model.text_encoder = ema_unet.eval().requires_grad_(False), ema_te.eval().requires_grad_(False)
    facts = {"config": asdict(config), "seconds": round(time.time() - t0, 1),
             "final_loss_mean_last100": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 5),
             "threads": torch.get_num_threads()}
    return model, facts
