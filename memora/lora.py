"""The MemoRa LoRA: training recipe, kohya export and loading.

Training follows diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` as the MemoRa reference runs it
(see ``memora.config.LoraTrainingConfig`` for the defaults): a peft LoRA on the UNet attention projections, the VAE,
text encoder and UNet base frozen, one caption for every image, DDPM noise with ``t ~ U[0, T)``, epsilon-MSE,
AdamW, a cosine learning rate, gradient accumulation and gradient clipping. Two departures, both for speed and
neither changing the maths: the VAE posterior of every image (and of its mirror image) is computed once and a
latent ``z = mean + std * eps`` is drawn from it at every micro-step (the reference re-encodes each image), and
the text embedding of the caption is computed once.

Files are written in the kohya layout that ComfyUI's ``LoraLoader``, A1111/Forge and diffusers all read::

    lora_unet_<diffusers module path, "." -> "_">.lora_down.weight   [r, in]   (peft lora_A)
    lora_unet_<...>.lora_up.weight                                    [out, r]  (peft lora_B)
    lora_unet_<...>.alpha                                             scalar    (peft lora_alpha, NOT the rank)

with the safetensors metadata ``ss_network_dim``, ``ss_network_alpha``, ``ss_network_module`` and a ``memora``
JSON entry (hyper-parameters, prompt, base and unlearned files, steps done, interruption).

``load_lora`` reads that layout, third-party SD 1.x kohya files with diffusers module names, diffusers
``unet.<module>.lora.down/up.weight`` files and peft ``<module>.lora_A/lora_B.weight`` files. Text-encoder LoRA
keys (``lora_te_*``, ``text_encoder.*``) are not applied: MemoRa LoRAs are UNet-only, and ``load_lora`` raises a
``WeightFormatError`` for such a file unless ``text_encoder="ignore"`` is passed (then it logs a warning naming how
many keys were skipped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import json
import logging
import math
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch
import torch.nn.functional as F

from .config import LoraTrainingConfig
from .errors import InputError, WeightFormatError
from .io import read_tensors, save_safetensors, save_torch
from .model import DiffusionModel
from .progress import ProgressCallback, report

logger = logging.getLogger(__name__)

KOHYA_UNET_PREFIX = "lora_unet_"
STATE_SUFFIX = ".state.pt"
STATE_FORMAT = "memora-lora-train-state"
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoder_2.", "te.")
_LDM_PREFIXES = ("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks",
                 "diffusion_model.", "lora_unet_time_embed", "lora_unet_out_")
# (suffix, role) pairs, longest first: how each LoRA format names the two factors and the alpha.
_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
_UNSUPPORTED_MARKERS = {".lora_mid.": "LoCon/Tucker (lora_mid)", ".hada_": "LoHa", ".lokr_": "LoKr",
                        ".dora_scale": "DoRA", ".oft_": "OFT", ".diff": "full weight difference (diff)"}


@dataclass
class TrainResult:
    """What ``train_lora`` did: the file it wrote (``None`` if none), how far it got and the loss per update."""

    path: Optional[Path]
    steps_done: int
    steps_total: int
    interrupted: bool
    losses: list[float] = field(default_factory=list)  # mean epsilon-MSE of each optimizer update
    seconds: float = 0.0
    checkpoints: list[Path] = field(default_factory=list)
    adapter_name: str = "memora"


# ====================================================================================== training


def train_lora(model: DiffusionModel, images: torch.Tensor, prompt: str, config: LoraTrainingConfig | None = None,
               *, adapter_name: str = "memora", out_path: str | Path | None = None,
               checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
               metadata: dict | None = None, callback: ProgressCallback | None = None) -> TrainResult:
    """Train a LoRA adapter named ``adapter_name`` on ``model.unet`` in place; optionally save it.

    Args:
        model: the (unlearned) model. Its UNet gets a new peft adapter, which stays active afterwards. Other
            adapters already on the UNet are deactivated (training sees the plain model, as in the reference);
            reactivate them with ``set_lora_weights``.
        images: ``[B, 3, R, R]`` float in 0..1, ``R = config.resolution`` (resize/crop with ``memora.images``).
        prompt: the one caption of every image.
        config: the recipe (paper defaults); ``config.steps`` counts optimizer updates.
        out_path: where to write the final LoRA (kohya layout). It must not exist yet.
        checkpoint_dir: where ``<stem>-step{n:05d}.safetensors`` (+ ``.state.pt`` resume state) go every
            ``config.checkpoint_every`` updates; ``<stem>`` is ``out_path``'s stem, else ``adapter_name``.
        resume_from: such a checkpoint (the ``.safetensors`` or its ``.state.pt``); training continues exactly.
        metadata: extra JSON-able entries for the file's ``memora`` metadata (e.g. the inversion settings).
        callback: ``report(callback, "train", step, total, loss=..., info={"lr": ...})`` after every update.

    If the callback (or a ``KeyboardInterrupt``) raises, a valid partial LoRA is written (to ``out_path``, else
    to ``checkpoint_dir``) with ``interrupted=true`` and ``steps_done`` in its metadata, a note naming it is added
    to the exception, and the exception propagates.
    """
    config = config or LoraTrainingConfig()
    _check_config(config)
    _check_training_images(images, config.resolution)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the training caption is empty; give the concept prompt, e.g. 'a photo of the parachute'")
    if adapter_name in (getattr(model.unet, "peft_config", None) or {}):
        raise InputError(f"the UNet already has an adapter named {adapter_name!r}; choose another adapter_name, "
                         f"or train on a fresh copy of the model (model.clone())")

    out_path = Path(out_path) if out_path is not None else None
    if out_path is not None and out_path.exists():
        raise FileExistsError(f"{out_path} already exists; choose a new file name (memora.io.next_free_path) "
                              f"or delete the old file first")
    stem = out_path.stem if out_path is not None else adapter_name
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if config.checkpoint_every and checkpoint_dir is None:
        raise InputError("config.checkpoint_every is set but no checkpoint_dir was given; pass a folder for the "
                         "checkpoints or set checkpoint_every=0")
    t_start = time.perf_counter()
    # ComfyUI runs nodes under torch.inference_mode(): autograd must be switched back on locally, and tensors made
    # in inference mode (the images, the weights of a model loaded there, anything read from disk there) must not
    # enter the graph or the optimizer, so they are cloned or read inside this block.
    with torch.inference_mode(False), torch.enable_grad():
        resume_state = _read_resume_state(resume_from) if resume_from is not None else None
        start_step = int(resume_state["step"]) if resume_state else 0
        if start_step > config.steps:
            raise InputError(f"the checkpoint {resume_from} is at update {start_step}, beyond config.steps="
                             f"{config.steps}; raise steps to continue training")
        planned = _planned_checkpoints(checkpoint_dir, stem, config, start_step)
        taken = [p for p in planned if p.exists()]
        if taken:
            raise FileExistsError(f"checkpoint {taken[0]} already exists; use another checkpoint_dir or out_path "
                                  f"name")

        images = images.detach().clone()
        session = None
        try:
            session = _TrainingSession(model, images, prompt, config, adapter_name)
            if resume_state is not None:
                session.restore(resume_state, Path(resume_from))
        except BaseException:  # leave the model as it was: no half-made adapter, no checkpointing switched on
            if session is not None:
                session.close()
            if adapter_name in (getattr(model.unet, "peft_config", None) or {}):
                model.unet.delete_adapters(adapter_name)
            raise
        result = TrainResult(path=None, steps_done=session.step, steps_total=config.steps, interrupted=False,
                             losses=list(session.losses), adapter_name=adapter_name)

        def file_metadata(interrupted: bool) -> dict:
            data = {
                "recipe": "memora", "prompt": prompt, "config": _config_dict(config),
                "base": model.provenance.base, "unlearned": list(model.provenance.unlearned),
                "method": model.provenance.method, "num_images": int(images.shape[0]),
                "resolution": int(config.resolution),
            }
            data.update(metadata or {})
            data.update(steps_done=session.step, steps_total=config.steps, interrupted=interrupted,
                        final_loss=session.losses[-1] if session.losses else None,
                        train_seconds=round(time.perf_counter() - t_start, 3))
            return data

        try:
            for loss in session.updates():
                result.losses.append(loss)
                result.steps_done = session.step
                if config.checkpoint_every and session.step % config.checkpoint_every == 0:
                    ckpt = checkpoint_dir / f"{stem}-step{session.step:05d}.safetensors"
                    save_lora(model, ckpt, adapter_name=adapter_name, metadata=file_metadata(False))
                    save_torch(session.state_dict(), _state_path(ckpt))
                    result.checkpoints.append(ckpt)
                report(callback, "train", session.step, config.steps, loss=loss, info={"lr": session.last_lr})
        except BaseException as exc:  # a ComfyUI interruption is a BaseException; so is KeyboardInterrupt
            session.close()
            result.interrupted = True
            result.steps_done = session.step
            result.seconds = time.perf_counter() - t_start
            partial = out_path or (checkpoint_dir / f"{stem}-interrupted-step{session.step:05d}.safetensors"
                                   if checkpoint_dir is not None else None)
            note = (f"MemoRa: LoRA training stopped after {session.step}/{config.steps} updates "
                    f"({type(exc).__name__}); ")
            if partial is not None and not partial.exists():
                try:
                    result.path = save_lora(model, partial, adapter_name=adapter_name, metadata=file_metadata(True))
                    note += f"the partial LoRA was saved to {partial}"
                except Exception as save_error:  # never hide the original exception behind a save failure
                    note += f"saving the partial LoRA to {partial} failed: {save_error}"
            elif partial is not None:
                note += f"no partial LoRA was written because {partial} already exists"
            else:
                note += ("no partial LoRA was written (give out_path or checkpoint_dir); the trained adapter "
                         f"{adapter_name!r} is still on the model")
            logger.warning(note)
            if hasattr(exc, "add_note"):
                exc.add_note(note)
            with contextlib.suppress(Exception):
                exc.memora_train_result = result
            raise
        session.close()

    result.seconds = time.perf_counter() - t_start
    if out_path is not None:
        result.path = save_lora(model, out_path, adapter_name=adapter_name, metadata=file_metadata(False))
    model.provenance.loras.append({"name": adapter_name, "path": str(result.path or ""), "weight": 1.0,
                                   "trained": True})
    return result


class _TrainingSession:
    """The state of one training run: adapter, optimizer, schedule, random streams and cached inputs."""

    def __init__(self, model: DiffusionModel, images: torch.Tensor, prompt: str, config: LoraTrainingConfig,
                 adapter_name: str):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        self.model, self.config, self.adapter_name = model, config, adapter_name
        unet = model.unet
        self.device = model.device
        self.num_images = int(images.shape[0])
        self.images_fingerprint = float(images.double().sum())

        for module in (unet, model.text_encoder, model.vae):
            if module is not None:
                module.requires_grad_(False)
        _replace_inference_tensors(unet)

        # Cached inputs: the VAE posterior of every image (and of its mirror image) and the caption embedding.
        with torch.no_grad():
            mean, std = model.latent_distribution(images)
            self.post_mean, self.post_std = [mean.float()], [std.float()]
            if config.random_flip:
                mean_f, std_f = model.latent_distribution(images.flip(-1))
                self.post_mean.append(mean_f.float())
                self.post_std.append(std_f.float())
            self.text_emb = model.encode_prompt(prompt)  # [1, 77, D]

        # The adapter: peft LoRA, Gaussian init from the training seed (the global RNG is left untouched).
        lora_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                 target_modules=list(config.target_modules))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            try:
                unet.add_adapter(lora_config, adapter_name=adapter_name)
            except ValueError as e:
                raise InputError(f"could not add the LoRA adapter: {e}. Check config.target_modules "
                                 f"({list(config.target_modules)}) against the UNet's module names") from e
        self.params = _adapter_parameters(unet, adapter_name)
        if not self.params:
            raise InputError(f"config.target_modules {list(config.target_modules)} matched no UNet layer")
        # LoRA weights train in float32 whatever the model dtype (diffusers' cast_training_params)
        for p in self.params:
            p.data = p.data.float()
            p.requires_grad_(True)

        # Precision and memory.
        self.autocast_dtype = _autocast_dtype(config.mixed_precision, self.device)
        fp16 = self.autocast_dtype == torch.float16 or model.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" and fp16 else None
        want_checkpointing = bool(config.gradient_checkpointing)
        self._was_checkpointing = bool(getattr(unet, "is_gradient_checkpointing", False))
        self._enabled_checkpointing = want_checkpointing and not self._was_checkpointing
        if self._enabled_checkpointing:
            unet.enable_gradient_checkpointing()
        self._was_training = unet.training
        unet.train()

        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler.config)
        self.num_train_timesteps = int(self.noise_scheduler.config.num_train_timesteps)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate,
                                           betas=(config.adam_beta1, config.adam_beta2),
                                           weight_decay=config.weight_decay, eps=config.adam_epsilon)
        self.lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.steps)
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.sampler = _EpochSampler(self.num_images, config.batch_size, self.generator)
        self.step = 0
        self.losses: list[float] = []
        self.last_lr = float(config.learning_rate)
        self._closed = False

    # ------------------------------------------------------------------ loop
    def updates(self) -> Iterator[float]:
        """Run optimizer updates until ``config.steps``; yield the mean loss of each one."""
        cfg = self.config
        while self.step < cfg.steps:
            micro_losses = []
            for _ in range(cfg.grad_accum):
                indices, end_of_epoch = self.sampler.next_batch()
                loss = self._micro_step(indices)
                micro_losses.append(loss)
                # Like accelerate (sync_with_dataloader): the end of an epoch forces an update.
                if end_of_epoch:
                    break
            self.last_lr = float(self.lr_scheduler.get_last_lr()[0])
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loss = float(sum(micro_losses) / len(micro_losses))
            self.losses.append(loss)
            yield loss

    def _micro_step(self, indices: torch.Tensor) -> float:
        """One forward/backward pass on the images ``indices``; returns the un-scaled loss."""
        cfg, g, n = self.config, self.generator, int(indices.shape[0])
        # Every random number is drawn on the CPU from one generator: the run is reproducible across devices.
        if cfg.random_flip:
            flip = torch.rand(n, generator=g) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool)
        shape = (n, *self.post_mean[0].shape[1:])
        posterior_eps = torch.randn(shape, generator=g)
        noise = torch.randn(shape, generator=g)
        timesteps = torch.randint(0, self.num_train_timesteps, (n,), generator=g)

        dev = self.device
        idx = indices.to(dev)
        flip_d = flip.to(dev).view(n, 1, 1, 1)
        mean = self.post_mean[0][idx]
        std = self.post_std[0][idx]
        if cfg.random_flip:
            mean = torch.where(flip_d, self.post_mean[1][idx], mean)
            std = torch.where(flip_d, self.post_std[1][idx], std)
        latents = mean + std * posterior_eps.to(dev)  # [n, C, h, w] float32
        noise, timesteps = noise.to(dev), timesteps.to(dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise

        unet = self.model.unet
        emb = self.text_emb.expand(n, -1, -1)
        with _autocast(dev, self.autocast_dtype):
            pred = unet(noisy.to(self.model.dtype), timesteps, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        scaled = loss / cfg.grad_accum  # accelerate divides every micro-batch loss by the accumulation count
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        return float(loss.detach())

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Everything needed to continue exactly; plain tensors, numbers, strings, lists and dicts only."""
        return {
            "format": STATE_FORMAT, "version": 1, "step": self.step, "steps_total": self.config.steps,
            "adapter_name": self.adapter_name, "config": _config_dict(self.config),
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "generator": self.generator.get_state(), "sampler": self.sampler.state_dict(),
            "losses": list(self.losses), "num_images": self.num_images,
            "images_fingerprint": self.images_fingerprint,
        }

    def restore(self, state: dict, source: Path) -> None:
        cfg = state["config"]
        for key in ("rank", "alpha", "target_modules", "batch_size", "grad_accum", "seed"):
            if key in cfg and _normalise(cfg[key]) != _normalise(getattr(self.config, key)):
                raise InputError(f"cannot resume from {source}: it was trained with {key}={cfg[key]!r}, the config "
                                 f"now says {getattr(self.config, key)!r}; use the checkpoint's settings")
        if int(state["num_images"]) != self.num_images:
            raise InputError(f"cannot resume from {source}: it was trained on {state['num_images']} images, "
                             f"{self.num_images} were given; pass the same training images")
        if not math.isclose(float(state["images_fingerprint"]), self.images_fingerprint, rel_tol=1e-4, abs_tol=1e-3):
            logger.warning("resuming from %s with images that differ from those it was trained on", source)
        if int(state["steps_total"]) != self.config.steps:
            logger.warning("resuming from %s: steps_total changes from %s to %s (the learning-rate schedule "
                           "stretches accordingly)", source, state["steps_total"], self.config.steps)
        lora_file = _lora_path_of_state(source) if str(source).endswith(STATE_SUFFIX) else source
        tensors, _ = read_tensors(lora_file)
        parsed = _parse_lora_tensors(self.model.unet, tensors, lora_file, text_encoder="error")
        for module, entry in parsed.modules.items():
            if entry.rank != self.config.rank or not math.isclose(entry.alpha, self.config.alpha):
                raise InputError(f"cannot resume from {lora_file}: module {module} has rank {entry.rank} / alpha "
                                 f"{entry.alpha}, the config says rank {self.config.rank} / alpha {self.config.alpha}")
        self._load_adapter_weights(parsed, lora_file)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.generator.set_state(state["generator"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]
        self.last_lr = float(self.lr_scheduler.get_last_lr()[0])

    def _load_adapter_weights(self, parsed: "_ParsedLora", source: Path) -> None:
        from peft.utils import set_peft_model_state_dict

        expected = {f"{name}.lora_A.weight" for name in _lora_layers(self.model.unet, self.adapter_name)}
        expected |= {k.replace(".lora_A.", ".lora_B.") for k in expected}
        sd = parsed.peft_state_dict(self.model.unet)
        if set(sd) != expected:
            missing = sorted(expected - set(sd))
            raise InputError(f"cannot resume from {source}: its LoRA does not cover the same layers as the config "
                             f"(first missing: {missing[:1]})")
        with torch.no_grad():
            set_peft_model_state_dict(self.model.unet, sd, adapter_name=self.adapter_name)
        for p in self.params:
            p.data = p.data.float()

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Leave the model ready for inference: no gradient checkpointing we added, previous mode, frozen LoRA."""
        if self._closed:
            return
        self._closed = True
        unet = self.model.unet
        self.optimizer.zero_grad(set_to_none=True)
        if self._enabled_checkpointing:
            unet.disable_gradient_checkpointing()
        unet.train(self._was_training)
        for p in self.params:
            p.requires_grad_(False)


class _EpochSampler:
    """Batches of image indices like a shuffled ``DataLoader`` (``drop_last=False``): a new permutation each epoch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm: torch.Tensor | None = None
        self.pos = 0
        self.epoch = 0

    def next_batch(self) -> tuple[torch.Tensor, bool]:
        """``(indices [b], end_of_epoch)``."""
        if self.perm is None or self.pos >= self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        indices = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += int(indices.shape[0])
        return indices, self.pos >= self.n

    def state_dict(self) -> dict:
        return {"perm": self.perm if self.perm is not None else torch.empty(0, dtype=torch.long),
                "pos": self.pos, "epoch": self.epoch, "has_perm": self.perm is not None}

    def load_state_dict(self, state: dict) -> None:
        self.perm = state["perm"].clone() if state["has_perm"] else None
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])


def _check_config(config: LoraTrainingConfig) -> None:
    checks = [
        (config.rank >= 1, f"rank must be >= 1, got {config.rank}"),
        (config.alpha > 0, f"alpha must be > 0, got {config.alpha}"),
        (config.steps >= 1, f"steps must be >= 1, got {config.steps}"),
        (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
        (config.grad_accum >= 1, f"grad_accum must be >= 1, got {config.grad_accum}"),
        (config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}"),
        (config.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {config.checkpoint_every}"),
        (len(config.target_modules) > 0, "target_modules is empty"),
        (config.mixed_precision in ("auto", "no", "fp16", "bf16"),
         f"mixed_precision must be auto, no, fp16 or bf16, got {config.mixed_precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"LoRA training config: {message}")


def _check_training_images(images: torch.Tensor, resolution: int) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise InputError(f"expected training images as a [B, 3, H, W] tensor in 0..1, got {shape}")
    if images.shape[0] == 0:
        raise InputError("no training images given")
    if images.shape[-2:] != (resolution, resolution):
        raise InputError(f"training images are {images.shape[-1]}x{images.shape[-2]}, the LoRA config trains at "
                         f"{resolution}x{resolution}; resize/crop them first (memora.images) or set "
                         f"config.resolution={images.shape[-1]} for square images")


def _autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    if mixed_precision == "fp16" or (mixed_precision == "auto" and device.type == "cuda"):
        return torch.float16
    if mixed_precision == "bf16":
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _replace_inference_tensors(module: torch.nn.Module) -> None:
    """Swap weights created under ``torch.inference_mode()`` for normal copies (autograd cannot save them)."""
    with torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()


def _config_dict(config: LoraTrainingConfig) -> dict:
    data = dataclasses.asdict(config)
    data["target_modules"] = list(config.target_modules)
    return data


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _state_path(lora_path: Path) -> Path:
    return lora_path.with_name(lora_path.name[: -len(".safetensors")] + STATE_SUFFIX)


def _lora_path_of_state(state_path: Path) -> Path:
    return state_path.with_name(state_path.name[: -len(STATE_SUFFIX)] + ".safetensors")


def _planned_checkpoints(folder: Path | None, stem: str, config: LoraTrainingConfig, start: int) -> list[Path]:
    if folder is None or not config.checkpoint_every:
        return []
    steps = range(start + 1, config.steps + 1)
    out = []
    for n in steps:
        if n % config.checkpoint_every == 0:
            ckpt = folder / f"{stem}-step{n:05d}.safetensors"
            out += [ckpt, _state_path(ckpt)]
    return out


def _read_resume_state(path: str | Path) -> dict:
    path = Path(path)
    if str(path).endswith(STATE_SUFFIX):
        state_path = path
    elif path.suffix == ".safetensors":
        state_path = _state_path(path)
    else:
        raise InputError(f"resume_from must be a training checkpoint (<name>-stepNNNNN.safetensors or its "
                         f"{STATE_SUFFIX} file), got {path}")
    if not state_path.exists():
        raise InputError(f"no resume state {state_path} next to the checkpoint; only checkpoints written by "
                         f"train_lora(checkpoint_dir=...) can be resumed")
    lora_path = _lora_path_of_state(state_path)
    if not lora_path.exists():
        raise InputError(f"the checkpoint LoRA {lora_path} belonging to {state_path} is missing")
    state, _ = read_tensors(state_path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(f"{state_path} is not a MemoRa LoRA training state")
    return state


# ====================================================================================== adapters


def _lora_layers(unet: torch.nn.Module, adapter_name: str | None = None) -> dict[str, Any]:
    """``{module name: peft LoraLayer}`` (only layers holding ``adapter_name`` when given)."""
    from peft.tuners.lora import LoraLayer

    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and (adapter_name is None or adapter_name in module.lora_A):
            layers[name] = module
    return layers


def _adapter_parameters(unet: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    params = []
    for layer in _lora_layers(unet, adapter_name).values():
        params += list(layer.lora_A[adapter_name].parameters()) + list(layer.lora_B[adapter_name].parameters())
    return params


def adapter_names(model: DiffusionModel) -> list[str]:
    """Names of the LoRA adapters attached to the UNet (active or not)."""
    return list((getattr(model.unet, "peft_config", None) or {}).keys())


def active_lora_weights(model: DiffusionModel) -> dict[str, float]:
    """``{adapter name: weight}`` of the adapters currently active on the UNet (weight 1 = as trained)."""
    weights: dict[str, float] = {}
    for layer in _lora_layers(model.unet).values():
        if getattr(layer, "disable_adapters", False):
            return {}
        for name in layer.active_adapters:
            if name in weights or name not in layer.scaling:
                continue
            r, alpha = layer.r[name], layer.lora_alpha[name]
            base = alpha / math.sqrt(r) if layer.use_rslora.get(name, False) else alpha / r
            weights[name] = float(layer.scaling[name] / base) if base else 0.0
    return weights


def set_lora_weights(model: DiffusionModel, weights: dict[str, float]) -> None:
    """Set the weight of each named adapter and make it active. Active adapters not named keep their weight;
    weight 0 keeps an adapter loaded without effect."""
    known = adapter_names(model)
    for name in weights:
        if name not in known:
            raise InputError(f"no LoRA adapter named {name!r} on the model (loaded: {known or 'none'})")
    combined = active_lora_weights(model)
    combined.update({k: float(v) for k, v in weights.items()})
    model.unet.set_adapters(list(combined), list(combined.values()))
    for entry in model.provenance.loras:
        if entry.get("name") in combined:
            entry["weight"] = combined[entry["name"]]


# ====================================================================================== saving


def save_lora(model: DiffusionModel, path: str | Path, *, adapter_name: str = "memora", alpha: float | None = None,
              metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write adapter ``adapter_name`` of ``model.unet`` as a kohya LoRA file (atomic; refuses to overwrite).

    Keys: ``lora_unet_<module with . -> _>.lora_down.weight`` ``[r, in]`` (= peft lora_A),
    ``.lora_up.weight`` ``[out, r]`` (= lora_B) and ``.alpha`` (the adapter's ``lora_alpha``; for rsLoRA
    ``lora_alpha * sqrt(r)`` so that ``alpha / r`` is the scale), all float32. ``alpha`` is only a check: if given,
    it must equal the adapter's configured alpha. ``metadata`` entries go into the ``memora`` JSON metadata.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"LoRA files are written as .safetensors; got {path.name}")
    config = (getattr(model.unet, "peft_config", None) or {}).get(adapter_name)
    layers = _lora_layers(model.unet, adapter_name)
    if config is None or not layers:
        raise InputError(f"no LoRA adapter named {adapter_name!r} on the model "
                         f"(loaded: {adapter_names(model) or 'none'})")
    if getattr(config, "use_dora", False):
        raise InputError("DoRA adapters cannot be written in the kohya LoRA layout")
    if alpha is not None and not math.isclose(float(alpha), float(config.lora_alpha)):
        raise InputError(f"alpha={alpha} differs from the adapter's lora_alpha={config.lora_alpha}; the file would "
                         f"not reproduce the adapter. Leave alpha=None to use the configured one")

    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas = set(), set()
    for name, layer in layers.items():
        key = KOHYA_UNET_PREFIX + name.replace(".", "_")
        down = layer.lora_A[adapter_name].weight.detach().float().cpu()
        up = layer.lora_B[adapter_name].weight.detach().float().cpu()
        if layer.lora_A[adapter_name].bias is not None or layer.lora_B[adapter_name].bias is not None:
            raise InputError("LoRA adapters with biases cannot be written in the kohya LoRA layout")
        r, a = layer.r[adapter_name], float(layer.lora_alpha[adapter_name])
        if layer.use_rslora.get(adapter_name, False):
            a = a * math.sqrt(r)
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(a, dtype=torch.float32)
        ranks.add(r)
        alphas.add(a)

    from . import __version__

    info = {
        "format": "kohya-lora", "adapter_name": adapter_name, "rank": int(config.r),
        "alpha": float(config.lora_alpha), "target_modules": sorted(_as_list(config.target_modules)),
        "modules": len(layers), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "memora_version": __version__,
    }
    info.update(metadata or {})
    file_meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": _num(max(alphas)),
        "ss_base_model_version": "sd_v1",
        "ss_training_comment": "MemoRa recovery LoRA (kohya layout, UNet only)",
        "memora": json.dumps(info, default=str, sort_keys=True),
    }
    return save_safetensors(dict(sorted(tensors.items())), path, metadata=file_meta, overwrite=overwrite)


def read_lora_metadata(path: str | Path) -> dict:
    """The safetensors metadata of a LoRA file, with the ``memora`` JSON entry parsed (``{}`` for other files)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise InputError(f"{path} is not a readable safetensors file ({e})") from e
    for key in ("memora", "lora_adapter_metadata"):
        if key in meta:
            with contextlib.suppress(ValueError):
                meta[key] = json.loads(meta[key])
    return meta


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


# ====================================================================================== loading


@dataclass
class _ModuleLora:
    down: Optional[torch.Tensor] = None
    up: Optional[torch.Tensor] = None
    alpha: Optional[float] = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class _ParsedLora:
    modules: dict[str, _ModuleLora]  # UNet module name -> factors
    naming: str
    skipped_text_encoder: int = 0

    def peft_state_dict(self, unet: torch.nn.Module) -> dict[str, torch.Tensor]:
        named = dict(unet.named_modules())
        sd = {}
        for name, entry in self.modules.items():
            base = _base_layer(named[name])
            down, up = entry.down, entry.up
            if isinstance(base, torch.nn.Conv2d) and down.ndim == 2:
                down, up = down[:, :, None, None], up[:, :, None, None]
            elif isinstance(base, torch.nn.Linear) and down.ndim == 4:
                down, up = down.flatten(1), up.flatten(1)
            sd[f"{name}.lora_A.weight"] = down
            sd[f"{name}.lora_B.weight"] = up
        return sd


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "base_layer", module)


def _unet_target_names(unet: torch.nn.Module) -> list[str]:
    """Names of the UNet's Linear/Conv2d layers (peft-wrapped ones by their wrapper's name)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    peft_internal = re.compile(r"\.(base_layer|lora_[A-Za-z_]+|lora_dropout)(\.|$)")
    for name, module in unet.named_modules():
        if not name or peft_internal.search(name):
            continue
        if isinstance(module, BaseTunerLayer) or isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            names.append(name)
    return names


def _parse_lora_tensors(unet: torch.nn.Module, tensors: dict, path: Path, *,
                        text_encoder: Literal["error", "ignore"], lora_alpha_meta: dict | None = None) -> _ParsedLora:
    """Group a LoRA file's tensors by UNet module (any supported naming) and check them against the UNet."""
    if not isinstance(tensors, dict) or not tensors:
        raise WeightFormatError(f"{path} holds no tensors; it is not a LoRA file")
    if "state_dict" in tensors and isinstance(tensors["state_dict"], dict):
        tensors = tensors["state_dict"]
    named_modules = dict(unet.named_modules())
    names = _unet_target_names(unet)
    by_kohya = {n.replace(".", "_"): n for n in names}
    name_set = set(names)
    modules: dict[str, _ModuleLora] = {}
    text_keys, unknown, namings = [], [], set()

    for key, value in tensors.items():
        if not torch.is_tensor(value):
            raise WeightFormatError(f"{path}: entry {key!r} is not a tensor; this is not a LoRA weights file")
        for marker, kind in _UNSUPPORTED_MARKERS.items():
            if marker in key:
                raise WeightFormatError(f"{path} is a {kind} adapter (key {key}); MemoRa loads plain LoRA "
                                        "(lora_down/lora_up). Use ComfyUI's LoraLoader for this file")
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            text_keys.append(key)
            continue
        role, stem = None, None
        for suffix, r in _SUFFIXES:
            if key.endswith(suffix):
                role, stem = r, key[: -len(suffix)]
                break
        if role is None:
            unknown.append((key, key))
            continue
        if stem.startswith(_LDM_PREFIXES):
            raise WeightFormatError(f"{path} names UNet layers the CompVis/LDM way ({key}); MemoRa's loader reads "
                                    "kohya files with diffusers module names (lora_unet_down_blocks_...). ComfyUI's "
                                    "LoraLoader reads this file as it is")
        if stem.startswith(KOHYA_UNET_PREFIX):
            module = by_kohya.get(stem[len(KOHYA_UNET_PREFIX):])
            namings.add("kohya")
        else:
            plain = stem
            for prefix in ("base_model.model.", "unet."):
                if plain.startswith(prefix):
                    plain = plain[len(prefix):]
            plain = _legacy_processor_name(plain, name_set)
            module = plain if plain in name_set else None
            namings.add("peft" if key.endswith(("lora_A.weight", "lora_B.weight")) else "diffusers")
        if module is None:
            unknown.append((key, stem))
            continue
        entry = modules.setdefault(module, _ModuleLora())
        if role == "alpha":
            entry.alpha = float(value.float().item())
        else:
            setattr(entry, role, value)

    if unknown:
        key, stem = unknown[0]
        probe = stem[len(KOHYA_UNET_PREFIX):] if stem.startswith(KOHYA_UNET_PREFIX) else stem
        pool = list(by_kohya) if stem.startswith(KOHYA_UNET_PREFIX) else names
        close = difflib.get_close_matches(probe, pool, n=1, cutoff=0.0)
        hint = (KOHYA_UNET_PREFIX + close[0] if stem.startswith(KOHYA_UNET_PREFIX) else close[0]) if close else "?"
        raise WeightFormatError(f"{path}: {len(unknown)} of {len(tensors)} keys match no layer of this UNet, e.g. "
                                f"{key!r} (closest layer: {hint!r}). Is the LoRA for another base model "
                                "(SDXL, SD2, Flux)?")
    if text_keys:
        if text_encoder == "error":
            raise WeightFormatError(f"{path} contains {len(text_keys)} text-encoder LoRA keys (e.g. {text_keys[0]}); "
                                    "MemoRa applies LoRAs to the UNet only. Pass text_encoder='ignore' to load the "
                                    "UNet part alone, or use ComfyUI's LoraLoader for the whole file")
        logger.warning("%s: ignoring %d text-encoder LoRA keys (e.g. %s); only the UNet part is applied",
                       path, len(text_keys), text_keys[0])
    if not modules:
        raise WeightFormatError(f"{path} has no UNet LoRA weights")

    meta_alpha = lora_alpha_meta or {}
    for name, entry in modules.items():
        if entry.down is None or entry.up is None:
            raise WeightFormatError(f"{path}: layer {name} has only one of the two LoRA factors (down/up); "
                                    "the file is incomplete")
        if entry.down.ndim not in (2, 4) or entry.up.shape[1] != entry.down.shape[0]:
            raise WeightFormatError(f"{path}: layer {name} has LoRA factors of shapes {tuple(entry.down.shape)} and "
                                    f"{tuple(entry.up.shape)}, which do not chain (down [r, in], up [out, r])")
        base = _base_layer(named_modules[name])
        w = base.weight
        if entry.up.shape[0] != w.shape[0] or entry.down.flatten(1).shape[1] != w[0].numel():
            raise WeightFormatError(f"{path}: layer {name} is {tuple(w.shape)} in this UNet but the LoRA factors "
                                    f"are {tuple(entry.down.shape)} / {tuple(entry.up.shape)}; the LoRA was made "
                                    "for another base model")
        if entry.alpha is None:
            entry.alpha = float(meta_alpha.get(name, meta_alpha.get("*", entry.rank)))
    return _ParsedLora(modules=modules, naming="+".join(sorted(namings)) or "unknown",
                       skipped_text_encoder=len(text_keys))


def _legacy_processor_name(name: str, known: set[str]) -> str:
    """Old diffusers attention-processor paths (``attn1.processor.to_q_lora``) -> module paths (``attn1.to_q``)."""
    if ".processor." not in name:
        return name
    name = name.replace(".processor.", ".")
    name = re.sub(r"(to_q|to_k|to_v|to_out)_lora$", r"\1", name)
    if name not in known and f"{name}.0" in known:
        name = f"{name}.0"
    return name


def _diffusers_alphas(meta: dict) -> dict[str, float]:
    """Alphas from a diffusers file's ``lora_adapter_metadata`` (``{"*": alpha, module: alpha}``)."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError:
        return {}
    out = {}
    prefix = "unet." if any(k.startswith("unet.") for k in data) else ""
    if f"{prefix}lora_alpha" in data and data[f"{prefix}lora_alpha"] is not None:
        out["*"] = float(data[f"{prefix}lora_alpha"])
    for pattern, value in (data.get(f"{prefix}alpha_pattern") or {}).items():
        out[pattern.lstrip("^")] = float(value)
    return out


def load_lora(model: DiffusionModel, path: str | Path, *, adapter_name: str | None = None, weight: float = 1.0,
              text_encoder: Literal["error", "ignore"] = "error") -> str:
    """Load a LoRA file onto ``model.unet`` as a new peft adapter, active with ``weight``; returns its name.

    Reads kohya files (``lora_unet_<module>.lora_down/lora_up.weight`` + ``.alpha``; a missing alpha means
    alpha = rank), diffusers files (``unet.<module>.lora.down/up.weight``; alpha from their
    ``lora_adapter_metadata``, else rank) and peft files (``<module>.lora_A/lora_B.weight``). Adapters already
    active stay active with their weights. Text-encoder keys raise ``WeightFormatError`` unless
    ``text_encoder="ignore"`` (then only the UNet part is loaded, with a logged warning).
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict

    path = Path(path)
    tensors, meta = read_tensors(path)
    unet = model.unet
    parsed = _parse_lora_tensors(unet, tensors, path, text_encoder=text_encoder,
                                 lora_alpha_meta=_diffusers_alphas(meta))

    existing = adapter_names(model)
    if adapter_name is None:
        adapter_name = _free_adapter_name(re.sub(r"\W", "_", path.stem) or "lora", existing)
    elif adapter_name in existing:
        raise InputError(f"the UNet already has an adapter named {adapter_name!r}; choose another name")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", adapter_name):
        raise InputError(f"adapter name {adapter_name!r} must be letters, digits and underscores")
    previous = active_lora_weights(model) if existing else {}

    # One LoraConfig for the file: the most common rank/alpha, exact per-layer patterns for the others.
    ranks = {name: e.rank for name, e in parsed.modules.items()}
    alphas = {name: float(e.alpha) for name, e in parsed.modules.items()}
    r0 = Counter(ranks.values()).most_common(1)[0][0]
    a0 = Counter(alphas.values()).most_common(1)[0][0]
    lora_config = LoraConfig(
        r=r0, lora_alpha=a0, target_modules=sorted(parsed.modules), init_lora_weights=True,
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != r0},
        alpha_pattern={re.escape(n): a for n, a in alphas.items() if a != a0},
    )
    dtype = model.dtype
    sd = {k: v.to(device=model.device, dtype=dtype) for k, v in parsed.peft_state_dict(unet).items()}
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft warns whenever a second adapter is injected; several adapters are what we want here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(lora_config, unet, adapter_name=adapter_name)
        unet._hf_peft_config_loaded = True
        with torch.no_grad():
            result = set_peft_model_state_dict(unet, sd, adapter_name=adapter_name)
        loaded = _lora_layers(unet, adapter_name)
        missing = [k for k in getattr(result, "missing_keys", []) if f".{adapter_name}." in k and ".lora_" in k]
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
        if set(loaded) != set(parsed.modules) or missing or unexpected:
            raise WeightFormatError(f"{path}: the LoRA did not load completely into the UNet (layers "
                                    f"{len(loaded)}/{len(parsed.modules)}, missing {missing[:2]}, unexpected "
                                    f"{unexpected[:2]})")
    except Exception:
        with contextlib.suppress(Exception):
            unet.delete_adapters(adapter_name)
        raise
    combined = dict(previous)
    combined[adapter_name] = float(weight)
    unet.set_adapters(list(combined), list(combined.values()))
    model.provenance.loras.append({"name": adapter_name, "path": str(path), "weight": float(weight),
                                   "naming": parsed.naming, "modules": len(parsed.modules),
                                   "skipped_text_encoder_keys": parsed.skipped_text_encoder})
    return adapter_name


def _free_adapter_name(base: str, taken: list[str]) -> str:
    if base[0].isdigit():
        base = f"lora_{base}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name
