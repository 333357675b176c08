"""The toy world in a graph (load a shipped toy model, draw concept images) and the ESD eraser."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from .common import NodeProgress
from .convert import image_to_comfy
from .types import MemoraModel, ModelRef


class LoadToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..memora.toy.model import SHIPPED

        return io.Schema(
            node_id="MemoRaLoadToyModel",
            display_name="Load Toy Model",
            category="MemoRa/toy",
            description="A shipped model of the toy world (16 px shapes, CPU-sized, the same diffusers classes as "
                        "SD): base (knows circles, squares, triangles, crosses), control (never saw a circle), "
                        "esd-circle and remap-circle (circle erased).",
            search_aliases=["toy", "demo model", "cpu model"],
            inputs=[io.Combo.Input("model", options=sorted(SHIPPED), default="base",
                                   tooltip="base: the original; esd-circle: after ESD-x; remap-circle: after a "
                                           "stronger eraser; control: never learned circles.")],
            outputs=[MemoraModel.Output(display_name="memora_model")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        from ..memora.toy.model import load_toy_model

        with torch.inference_mode(False):  # the weights must be trainable later (LoRA)
            loaded = load_toy_model(model)
        return io.NodeOutput(ModelRef(loaded, label=f"toy/{model}"))


class ToyConceptImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..memora.toy.data import SHAPES

        return io.Schema(
            node_id="MemoRaToyConceptImages",
            display_name="Toy Concept Images",
            category="MemoRa/toy",
            description="A few procedurally drawn images of a toy shape (the 'few images of the concept' a recovery "
                        "starts from), one colour each, with their captions.",
            search_aliases=["toy images", "concept images"],
            inputs=[
                io.Combo.Input("shape", options=list(SHAPES), default="circle", tooltip="The concept."),
                io.Int.Input("count", default=4, min=1, max=256, tooltip="Number of images (the demo: 4)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of sizes, positions, colours."),
            ],
            outputs=[io.Image.Output(display_name="images"),
                     io.String.Output(display_name="captions", tooltip="One caption per line.")],
        )

    @classmethod
    def execute(cls, shape, count, seed) -> io.NodeOutput:
        from ..memora.toy.data import concept_images

        batch = concept_images(shape, count, seed)
        return io.NodeOutput(image_to_comfy(batch.images), "\n".join(batch.captions))


class EraseConceptESD(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..memora.erase import ESDConfig

        default = ESDConfig()
        return io.Schema(
            node_id="MemoRaEraseESD",
            display_name="Erase Concept (ESD)",
            category="MemoRa/erase",
            description="Make an unlearned model yourself: ESD (Gandikota et al.) fine-tunes a copy of the UNet so "
                        "that the concept's prediction moves away from it (negative guidance). The input model is "
                        "not changed. On SD 1.x the paper's ESD-x takes about 1000 iterations on a GPU.",
            search_aliases=["esd", "erase", "unlearn", "concept erasure"],
            inputs=[
                MemoraModel.Input("memora_model", tooltip="The model to erase the concept from (no LoRA applied)."),
                io.String.Input("prompts", multiline=True, default="a photo of the nude person",
                                tooltip="The concept, one phrasing per line (one is drawn per sample; several "
                                        "phrasings make the erasure generalise)."),
                io.Combo.Input("params", options=["x", "xkv", "u", "full"], default=default.params,
                               tooltip="x: ESD-x, cross-attention (styles, the paper's choice for many concepts); "
                                       "xkv: only its key/value projections; u: ESD-u, all but cross-attention "
                                       "(objects, nudity); full: every UNet weight."),
                io.Int.Input("iterations", default=default.iterations, min=1, max=100000,
                             tooltip="Optimizer steps (ESD on SD 1.4: 1000)."),
                io.Float.Input("learning_rate", default=default.lr, min=1e-8, max=1.0, step=1e-6,
                               tooltip="Adam learning rate (ESD on SD 1.4: 1e-5)."),
                io.Float.Input("negative_guidance", default=default.negative_guidance, min=0.0, max=10.0, step=0.1,
                               tooltip="eta: how far the target moves away from the concept (ESD: 1)."),
                io.Int.Input("ddim_steps", default=default.ddim_steps, min=1, max=1000,
                             tooltip="DDIM steps of the sampler that produces x_t (ESD: 50)."),
                io.Float.Input("sample_guidance", default=default.sample_guidance, min=0.0, max=30.0, step=0.1,
                               tooltip="CFG of that sampler (ESD: 3)."),
                io.Int.Input("batch_size", default=default.batch_size, min=1, max=256,
                             tooltip="Samples per step (ESD: 1)."),
                io.Int.Input("seed", default=default.seed, min=0, max=2**31 - 1, tooltip="Training seed."),
            ],
            outputs=[MemoraModel.Output(display_name="memora_model", tooltip="The erased model (a new copy).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef, prompts, params, iterations, learning_rate, negative_guidance,
                ddim_steps, sample_guidance, batch_size, seed) -> io.NodeOutput:
        from ..memora.erase import ESDConfig, esd
        from ..memora.errors import InputError
        from ..memora.lora import adapter_names

        phrasings = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not phrasings:
            raise InputError("ESD needs the concept: write at least one prompt line")
        if memora_model.adapters or adapter_names(memora_model.model):
            raise InputError("erase a model without LoRA adapters: connect Load Unlearned Model / Load Toy Model "
                             "directly")
        config = ESDConfig(params=params, iterations=iterations, lr=learning_rate,
                           negative_guidance=negative_guidance, ddim_steps=ddim_steps,
                           sample_guidance=sample_guidance, batch_size=batch_size, seed=seed)
        with torch.inference_mode(False):
            model = memora_model.model.clone()  # the input model stays as it is (outputs are shared)
            result = esd(model, phrasings, config, callback=NodeProgress(cls.hidden.unique_id))
        model.provenance.method = result.method
        model.provenance.unlearned = list(model.provenance.unlearned) + [f"{result.method} in ComfyUI"]
        summary = {"method": result.method, "trained_tensors": len(result.trained), "config": result.config,
                   "final_loss": result.losses[-1] if result.losses else None, "seconds": round(result.seconds, 1)}
        text = (f"{result.method}: {len(result.trained)} tensors, {iterations} iterations, final loss "
                f"{summary['final_loss']:.4f}, {result.seconds:.0f} s")
        return io.NodeOutput(ModelRef(model, label=f"{memora_model.label} -> {result.method}"),
                             ui={"text": (text + "\n" + json.dumps(summary),)})
