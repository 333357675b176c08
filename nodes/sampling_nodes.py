"""Sampling nodes: generate with the (unlearned, LoRA-patched) model, and AutoMemoRa two-model guidance."""

from __future__ import annotations

from comfy_api.latest import io

from .common import NodeProgress
from .convert import image_to_comfy
from .types import MemoraModel, ModelRef

SCHEDULERS = ["lms", "ddim"]


def _common_inputs(default_prompt: str) -> list:
    return [
        io.String.Input("prompt", multiline=True, default=default_prompt, tooltip="The prompt (max 77 tokens)."),
        io.Int.Input("seed", default=2024, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the first image; image i uses seed + i. Noise is drawn on the CPU, so a seed "
                             "gives the same image on any device."),
        io.Int.Input("count", default=4, min=1, max=1024, tooltip="Number of images."),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (the evaluation protocol: 50)."),
        io.Float.Input("guidance", default=7.5, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance scale (7.5 unless a prompt set says otherwise)."),
        io.Combo.Input("scheduler", options=SCHEDULERS, default="lms",
                       tooltip="lms: the MemoRa / UnlearnDiffAtk evaluation protocol; ddim: deterministic DDIM."),
        io.Int.Input("width", default=0, min=0, max=4096, step=8, tooltip="0 = the model's size (512 for SD 1.x)."),
        io.Int.Input("height", default=0, min=0, max=4096, step=8, tooltip="0 = the model's size (512 for SD 1.x)."),
        io.String.Input("negative_prompt", default="", optional=True, tooltip="Negative prompt."),
    ]


class Generate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaGenerate",
            display_name="Generate (MemoRa)",
            category="MemoRa/sampling",
            description="Text-to-image with the model on this link (unlearned, with the LoRAs applied here), with "
                        "the evaluation protocol's sampler. Compare before / after recovery with the same seeds.",
            search_aliases=["sample", "text to image", "evaluate"],
            inputs=[MemoraModel.Input("memora_model", tooltip="The model to sample from.")]
                   + _common_inputs("a photo of the nude person"),
            outputs=[io.Image.Output(display_name="images")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, prompt, seed, count, steps, guidance, scheduler, width, height,
                negative_prompt="") -> io.NodeOutput:
        from ..memora.sampling import generate

        model = memora_model.activate()
        images = generate(model, [prompt] * count, seeds=[seed + i for i in range(count)], guidance=guidance,
                          steps=steps, scheduler=scheduler, negative_prompt=negative_prompt,
                          height=height or None, width=width or None, callback=NodeProgress(cls.hidden.unique_id))
        return io.NodeOutput(image_to_comfy(images))


class AutoMemoraSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaAutoMemoRaSampler",
            display_name="AutoMemoRa Sampler",
            category="MemoRa/sampling",
            description="AutoMemoRa: guide between the model with its MemoRa LoRA (main) and the plain unlearned "
                        "model (bad): eps = eps_bad + w * (eps_main - eps_bad), each with its own CFG. w = 1 is the "
                        "LoRA model alone; w > 1 pushes further towards the recovered concept.",
            search_aliases=["automemora", "autoguidance", "two-model guidance"],
            inputs=[
                MemoraModel.Input("memora_model", tooltip="The unlearned model with a MemoRa LoRA applied (the last "
                                                          "LoRA applied on this link is the main model's)."),
                io.Float.Input("w", default=2.0, min=-10.0, max=20.0, step=0.05,
                               tooltip="Guidance weight between the two models (1 = no extra guidance)."),
            ] + _common_inputs("a photo of the nude person"),
            outputs=[io.Image.Output(display_name="images")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, w, prompt, seed, count, steps, guidance, scheduler, width, height,
                negative_prompt="") -> io.NodeOutput:
        from ..memora.errors import InputError
        from ..memora.guidance import generate_automemora

        if not memora_model.adapters:
            raise InputError("AutoMemoRa needs a model with a MemoRa LoRA: connect Train MemoRa LoRA or Apply "
                             "MemoRa LoRA before this node")
        model = memora_model.activate()
        lora_adapter = memora_model.adapters[-1][0]
        images = generate_automemora(model, [prompt] * count, seeds=[seed + i for i in range(count)], w=w,
                                     guidance=guidance, steps=steps, scheduler=scheduler,
                                     negative_prompt=negative_prompt, lora_adapter=lora_adapter,
                                     height=height or None, width=width or None,
                                     callback=NodeProgress(cls.hidden.unique_id))
        return io.NodeOutput(image_to_comfy(images))
