"""Recovery nodes: DDIM Invert, Slerp Batch, Regenerate - the steps that build MemoRa's training set."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..memora.config import InversionConfig, LoraTrainingConfig

from .convert import image_to_comfy, image_to_engine, noisy_latent_to_comfy
from .common import NodeProgress
from .types import MemoraInverted, MemoraModel, ModelRef

_INV = InversionConfig()
_PROMPT_TIP = ("The concept prompt, as in the paper: e.g. 'a photo of the nude person', 'a photo of the parachute'. "
               "Max 77 tokens.")


def _inverted_latent_output(inverted, model) -> dict:
    import torch as _torch

    abar = float(model.scheduler.alphas_cumprod[int(inverted.timestep)])
    return noisy_latent_to_comfy(inverted.latents.to(_torch.float32), abar, model.scaling_factor)


class DDIMInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaDDIMInvert",
            display_name="DDIM Invert (MemoRa)",
            category="MemoRa/recovery",
            description="Encode concept images with the unlearned model's VAE and DDIM-invert them with the "
                        "unlearned model to an intermediate noise level (start_step of steps).",
            search_aliases=["inversion", "unsample", "invert images"],
            inputs=[
                MemoraModel.Input("memora_model", tooltip="The unlearned model (it inverts and later regenerates)."),
                io.Image.Input("images", tooltip="A few images of the erased concept (the paper uses 6 = 3 pairs). "
                                                 "Any size: they are resized and centre-cropped to 'resolution'."),
                io.String.Input("prompt", multiline=True, default="a photo of the nude person", tooltip=_PROMPT_TIP),
                io.Int.Input("steps", default=_INV.steps, min=2, max=1000,
                             tooltip="DDIM steps of the whole schedule (the paper: 50)."),
                io.Int.Input("start_step", default=_INV.start_step, min=0, max=999,
                             tooltip="Inversion depth: regeneration runs the last steps - start_step steps (the "
                                     "paper: 15 of 50, i.e. noise level t=661/681). 0 = full inversion."),
                io.Float.Input("guidance", default=_INV.inversion_guidance, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance during inversion (the reference: 7.5; 1.0 gives "
                                       "the most exact reconstruction)."),
                io.Boolean.Input("faithful", default=_INV.faithful,
                                 tooltip="On: the reference code's update rules, including its one-step offset "
                                         "(inverted to t=661, regenerated from t=681). Off: textbook DDIM inversion."),
                io.Boolean.Input("sample_posterior", default=_INV.sample_posterior,
                                 tooltip="Encode with a sample of the VAE posterior (the reference) instead of its "
                                         "mean."),
                io.Int.Input("seed", default=_INV.seed, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the VAE posterior sample."),
                io.Int.Input("resolution", default=LoraTrainingConfig().resolution, min=8, max=4096, step=8,
                             tooltip="Images are resized (shorter side) and centre-cropped to this square size."),
                io.String.Input("negative_prompt", default="", optional=True, tooltip="Negative prompt for CFG."),
                io.Int.Input("batch_size", default=_INV.batch_size, min=1, max=256, optional=True, advanced=True,
                             tooltip="Images per UNet call (CFG doubles it). Lower it if memory runs out."),
            ],
            outputs=[
                MemoraInverted.Output(display_name="inverted", tooltip="Inverted latents with their schedule."),
                io.Latent.Output(display_name="latent",
                                 tooltip="The same noisy latents for core samplers (KSamplerAdvanced with "
                                         "add_noise disabled), in ComfyUI's scaling."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, images, prompt, steps, start_step, guidance, faithful,
                sample_posterior, seed, resolution, negative_prompt="", batch_size=_INV.batch_size) -> io.NodeOutput:
        from ..memora.images import prepare_tensor_images
        from ..memora.inversion import invert

        model = memora_model.activate()
        pixels = prepare_tensor_images(image_to_engine(images), resolution)
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = model.encode_images(pixels, sample=sample_posterior, generator=generator, batch_size=batch_size)
        inverted = invert(model, latents, prompt, steps=steps, start_step=start_step, guidance=guidance,
                          negative_prompt=negative_prompt, faithful=faithful, batch_size=batch_size,
                          callback=NodeProgress(cls.hidden.unique_id))
        return io.NodeOutput(inverted, _inverted_latent_output(inverted, model))


class SlerpBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaSlerpBatch",
            display_name="Slerp Batch (MemoRa)",
            category="MemoRa/recovery",
            description="Spherical interpolation between pairs of inverted latents: k + 1 weights i/k per pair, "
                        "endpoints included. The paper: 6 images in 3 consecutive pairs, k = 10 -> 33 latents.",
            search_aliases=["slerp", "interpolate latents", "spherical interpolation"],
            inputs=[
                MemoraInverted.Input("inverted", tooltip="Inverted latents from DDIM Invert."),
                io.Int.Input("interp_steps", default=_INV.interp_steps, min=1, max=1000,
                             tooltip="k: weights 0, 1/k, ..., 1 per pair (k + 1 latents per pair)."),
                io.Combo.Input("pairs", options=["consecutive", "all"], default=_INV.pairs,
                               tooltip="consecutive: (0,1), (2,3), ... as the paper (an odd last image pairs with "
                                       "its predecessor); all: every pair of images."),
            ],
            outputs=[MemoraInverted.Output(display_name="inverted",
                                           tooltip="pairs x (k + 1) latents, pair by pair, weights ascending.")],
        )

    @classmethod
    def execute(cls, inverted, interp_steps, pairs) -> io.NodeOutput:
        from ..memora.interpolation import interpolate_inverted

        return io.NodeOutput(interpolate_inverted(inverted, k=interp_steps, pairs=pairs))


class Regenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaRegenerate",
            display_name="Regenerate (MemoRa)",
            category="MemoRa/recovery",
            description="Denoise inverted (or interpolated) latents with the unlearned model from the step they "
                        "were inverted to, and decode them: MemoRa's training images.",
            search_aliases=["regenerate", "denoise inverted", "memora sample"],
            inputs=[
                MemoraModel.Input("memora_model", tooltip="The unlearned model (the same one that inverted)."),
                MemoraInverted.Input("inverted", tooltip="Latents from DDIM Invert or Slerp Batch."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Prompt for regeneration; empty = the prompt used for inversion."),
                io.Float.Input("guidance", default=_INV.regeneration_guidance, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance (the reference: 7.5)."),
                io.String.Input("negative_prompt", default="", optional=True, tooltip="Negative prompt for CFG."),
                io.Int.Input("batch_size", default=_INV.batch_size, min=1, max=256, optional=True, advanced=True,
                             tooltip="Latents per UNet call (CFG doubles it). Lower it if memory runs out."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The regenerated training images.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, inverted, prompt, guidance, negative_prompt="",
                batch_size=_INV.batch_size) -> io.NodeOutput:
        from ..memora.inversion import regenerate

        model = memora_model.activate()
        latents = regenerate(model, inverted, prompt.strip() or inverted.prompt, guidance=guidance,
                             negative_prompt=negative_prompt, batch_size=batch_size,
                             callback=NodeProgress(cls.hidden.unique_id))
        return io.NodeOutput(image_to_comfy(model.decode_latents(latents, batch_size=batch_size)))
