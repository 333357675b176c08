"""Training nodes: Train MemoRa LoRA, and Apply MemoRa LoRA (chain several for Multi-MemoRa)."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

from ..memora.config import LoraTrainingConfig

from .common import NodeProgress, filenames, lora_output_path, unique_adapter_name
from .convert import image_to_comfy, image_to_engine
from .preview import loss_curve_image
from .types import LossMap, MemoraModel, ModelRef

_LORA = LoraTrainingConfig()


class TrainMemoraLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaTrainLoRA",
            display_name="Train MemoRa LoRA",
            category="MemoRa/recovery",
            description="Fine-tune a small LoRA on the unlearned UNet with the regenerated images and one caption "
                        "(the paper's recipe). Writes it under models/loras (loadable by core LoraLoader), shows the "
                        "loss live, and on Cancel writes the partial LoRA.",
            search_aliases=["train lora", "memora lora", "relearn"],
            is_output_node=True,
            inputs=[
                MemoraModel.Input("memora_model", tooltip="The unlearned model to recover the concept in."),
                io.Image.Input("images", tooltip="Training images: the output of Regenerate (or your own)."),
                io.String.Input("prompt", multiline=True, default="a photo of the nude person",
                                tooltip="The single caption of every training image (the concept prompt)."),
                io.Int.Input("steps", default=_LORA.steps, min=1, max=100000,
                             tooltip="Optimizer updates (the paper: 500)."),
                io.Int.Input("rank", default=_LORA.rank, min=1, max=256, tooltip="LoRA rank (the paper: 4)."),
                io.Float.Input("alpha", default=_LORA.alpha, min=0.01, max=1024.0, step=0.01,
                               tooltip="LoRA alpha; the update is scaled by alpha / rank (the paper: 4)."),
                io.Float.Input("learning_rate", default=_LORA.learning_rate, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate, cosine schedule without warm-up (the paper: 1e-4)."),
                io.Int.Input("batch_size", default=_LORA.batch_size, min=1, max=64,
                             tooltip="Images per micro-batch (the paper: 1)."),
                io.Int.Input("grad_accum", default=_LORA.grad_accum, min=1, max=256,
                             tooltip="Micro-batches per update (the paper: 4)."),
                io.Int.Input("resolution", default=_LORA.resolution, min=8, max=4096, step=8,
                             tooltip="Images are resized and centre-cropped to this size (the paper: 512)."),
                io.Int.Input("seed", default=_LORA.seed, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Training seed: LoRA init, noise, timesteps, flips (the paper: 2024)."),
                io.String.Input("filename_prefix", default="memora/memora_lora",
                                tooltip="Where the LoRA goes, relative to models/loras; a number is added so no "
                                        "file is overwritten."),
                io.Combo.Input("lr_scheduler", options=["cosine", "constant", "linear"], default=_LORA.lr_scheduler,
                               optional=True, advanced=True, tooltip="Learning-rate schedule."),
                io.Boolean.Input("random_flip", default=_LORA.random_flip, optional=True, advanced=True,
                                 tooltip="Random horizontal flips (the paper: on)."),
                io.Combo.Input("mixed_precision", options=["auto", "no", "fp16", "bf16"],
                               default=_LORA.mixed_precision, optional=True, advanced=True,
                               tooltip="auto: fp16 autocast on a GPU with fp32 LoRA weights (the paper), none on "
                                       "the CPU."),
                io.Int.Input("checkpoint_every", default=0, min=0, max=100000, optional=True, advanced=True,
                             tooltip="Also write a LoRA every N updates (for recovery curves); 0 = only the final "
                                     "one."),
            ],
            outputs=[
                MemoraModel.Output(display_name="memora_model", tooltip="The model with the trained LoRA active."),
                io.String.Output(display_name="lora_path", tooltip="The LoRA file written."),
                LossMap.Output(display_name="loss_map", tooltip="Loss per update, for core's Plot Loss Graph."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, images, prompt, steps, rank, alpha, learning_rate, batch_size,
                grad_accum, resolution, seed, filename_prefix, lr_scheduler=_LORA.lr_scheduler,
                random_flip=_LORA.random_flip, mixed_precision=_LORA.mixed_precision,
                checkpoint_every=0) -> io.NodeOutput:
        from ..memora.images import pil_to_tensor, prepare_tensor_images
        from ..memora.lora import train_lora

        config = LoraTrainingConfig(rank=rank, alpha=alpha, steps=steps, learning_rate=learning_rate,
                                    lr_scheduler=lr_scheduler, batch_size=batch_size, grad_accum=grad_accum,
                                    resolution=resolution, random_flip=random_flip,
                                    mixed_precision=mixed_precision, seed=seed, checkpoint_every=checkpoint_every)
        out_path = lora_output_path(filename_prefix)
        model = ModelRef(memora_model.model, label=memora_model.label).activate()  # train on the unlearned model
        name = unique_adapter_name()
        losses: list[float] = []  # every update's loss; the live preview is drawn only every 10th update
        progress = NodeProgress(cls.hidden.unique_id, preview=lambda event: loss_curve_image(losses, event.total),
                                preview_every=10)

        def callback(event):
            if event.phase == "train" and event.loss is not None:
                losses.append(event.loss)
            progress(event)

        pixels = prepare_tensor_images(image_to_engine(images), resolution)
        metadata = {"prompt": prompt, "base": model.provenance.base, "unlearned": model.provenance.unlearned,
                    "method": model.provenance.method, "comfyui_node": "MemoRaTrainLoRA"}
        result = train_lora(model, pixels, prompt, config, adapter_name=name, out_path=out_path,
                            checkpoint_dir=out_path.parent if checkpoint_every else None, metadata=metadata,
                            callback=callback)
        curve = image_to_comfy(pil_to_tensor([loss_curve_image(result.losses, result.steps_total)]))
        return io.NodeOutput(memora_model.with_adapter(name, 1.0, str(result.path)), str(result.path),
                             {"loss": list(result.losses)},
                             ui=ui.PreviewImage(curve, cls=cls))


class ApplyMemoraLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):

        return io.Schema(
            node_id="MemoRaApplyLoRA",
            display_name="Apply MemoRa LoRA",
            category="MemoRa/model",
            description="Apply a LoRA (a MemoRa recovery LoRA, or any SD 1.x kohya / diffusers / peft LoRA) to the "
                        "model at a weight. Chain several for Multi-MemoRa (several recovered concepts at once).",
            search_aliases=["multi-memora", "load lora", "apply lora"],
            inputs=[
                MemoraModel.Input("memora_model", tooltip="The (unlearned) model."),
                io.Combo.Input("lora_name", options=filenames("loras"),
                               tooltip="A LoRA file from models/loras. Only its UNet part is applied here; for a "
                                       "LoRA's text-encoder part use core LoraLoader after the MODEL/CLIP/VAE bridge."),
                io.Float.Input("weight", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="LoRA strength (the paper evaluates at 1.0)."),
            ],
            outputs=[MemoraModel.Output(display_name="memora_model", tooltip="The model with the LoRA added.")],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, lora_name, weight) -> io.NodeOutput:
        import folder_paths

        from ..memora.lora import load_lora

        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        name = unique_adapter_name("lora")
        with torch.inference_mode(False):
            load_lora(memora_model.model, path, adapter_name=name, weight=weight, text_encoder="ignore")
        return io.NodeOutput(memora_model.with_adapter(name, weight, os.path.basename(path)))
