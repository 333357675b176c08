"""Model nodes: load an unlearned model, and hand it to ComfyUI core as MODEL / CLIP / VAE."""

from __future__ import annotations

import json
import os
import tempfile

import torch
from comfy_api.latest import io, ui

from .common import (DTYPES, NONE, base_model_options, compute_device, make_room, pick_dtype, resolve_option,
                     unlearned_options)
from .types import MemoraModel, ModelRef


class LoadUnlearnedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaLoadUnlearnedModel",
            display_name="Load Unlearned Model (MemoRa)",
            category="MemoRa/model",
            description="Load a Stable Diffusion 1.x base and the weights of an unlearned (concept-erased) model "
                        "on top of it. Every released format is detected: diffusers or CompVis UNet files (ESD, FMN, "
                        "UCE, SalUn, ScissorHands, EraseDiff, SPM), text-encoder files (AdvUnlearn), full "
                        "diffusers pipeline folders (MACE) and LoRA-style adapters (merged).",
            search_aliases=["unlearned", "erased model", "ESD", "AdvUnlearn", "MACE"],
            inputs=[
                io.Combo.Input("base", options=base_model_options(),
                               tooltip="The base SD 1.x model: a single-file checkpoint from models/checkpoints or a "
                                       "diffusers folder from models/diffusers (SD 1.4 for the paper's results)."),
                io.Combo.Input("unlearned", options=unlearned_options(), default=NONE,
                               tooltip="Unlearned weights applied on the base: a file or pipeline folder from "
                                       "models/unlearned (or diffusion_models, text_encoders, loras, diffusers). "
                                       "[none] keeps the base (the 'original model' row of an audit)."),
                io.Combo.Input("unlearned_extra", options=unlearned_options(), default=NONE, optional=True,
                               tooltip="A second unlearned file applied after the first (e.g. a text encoder "
                                       "and a UNet of the same method)."),
                io.String.Input("method", default="", optional=True,
                                tooltip="Name of the unlearning method (e.g. ESD); recorded in the LoRA metadata."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weights dtype. auto: fp16 on a GPU, fp32 on the CPU. The reference runs "
                                       "unlearned models in fp32."),
            ],
            outputs=[
                MemoraModel.Output(display_name="memora_model", tooltip="The unlearned model for the MemoRa nodes."),
                io.String.Output(display_name="report",
                                 tooltip="What was loaded: per file the component, key naming, matched / missing "
                                         "keys (JSON)."),
            ],
        )

    @classmethod
    def execute(cls, base, unlearned, dtype, unlearned_extra=NONE, method="") -> io.NodeOutput:
        from ..memora.loading import load_model

        files = [resolve_option(o) for o in (unlearned, unlearned_extra) if o and o != NONE]
        device = compute_device()
        torch_dtype = pick_dtype(dtype, device)
        make_room(2_200_000_000 if torch_dtype != torch.float32 else 4_400_000_000, device)
        # ComfyUI runs nodes under inference_mode; weights created there could never take part in training.
        with torch.inference_mode(False):
            model = load_model(resolve_option(base), files, device=device, dtype=torch_dtype, method=method or "")
        report = json.dumps(model.provenance.to_dict(), indent=2)
        lines = [f"base: {base}"] + [f"{r.path.split('/')[-1]}: {r.component} ({r.naming}) "
                                     f"{r.matched}/{r.total} tensors{' partial' if r.partial else ''}"
                                     for r in model.provenance.reports]
        label = " + ".join([base] + [o for o in (unlearned, unlearned_extra) if o and o != NONE])
        return io.NodeOutput(ModelRef(model, label=label), report, ui=ui.PreviewText("\n".join(lines)))


class MemoraToComfy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MemoRaToComfyModel",
            display_name="MemoRa Model to MODEL/CLIP/VAE",
            category="MemoRa/model",
            description="Hand the unlearned model (with the LoRAs applied on this link, at their weights) to "
                        "ComfyUI core, so ordinary KSampler, LoraLoader and CLIP Text Encode graphs can use it.",
            search_aliases=["bridge", "to checkpoint", "convert model"],
            inputs=[MemoraModel.Input("memora_model", tooltip="A model from Load Unlearned Model (optionally "
                                                               "with MemoRa LoRAs applied).")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.Vae.Output(display_name="VAE")],
        )

    @classmethod
    def execute(cls, memora_model: ModelRef) -> io.NodeOutput:
        import comfy.sd
        import comfy.utils
        import folder_paths

        from ..memora.errors import InputError
        from ..memora.loading import model_to_compvis
        from ..memora.lora import save_lora

        model = memora_model.model
        if model.vae is None:
            raise InputError("this model works in pixel space (the toy world) and has no SD 1.x VAE; only SD 1.x "
                             "models can be handed to ComfyUI core")
        with torch.inference_mode(False):
            memora_model.activate()  # not needed for the export itself, but keeps adapters in a known state
            state_dict = model_to_compvis(model)
        out = comfy.sd.load_state_dict_guess_config(state_dict, output_vae=True, output_clip=True,
                                                     embedding_directory=folder_paths.get_folder_paths("embeddings"))
        if out is None or out[0] is None:
            raise InputError("ComfyUI did not recognise the exported model as SD 1.x")
        comfy_model, clip, vae = out[0], out[1], out[2]
        # Each adapter of this link goes to ComfyUI as the kohya file save_lora writes (what core's LoraLoader
        # reads, whatever format the adapter was loaded from), through a temporary file.
        with tempfile.TemporaryDirectory(prefix="memora_bridge_") as tmp:
            for name, weight in memora_model.adapters:
                path = save_lora(model, os.path.join(tmp, f"{name}.safetensors"), adapter_name=name)
                comfy_model, clip = comfy.sd.load_lora_for_models(comfy_model, clip, comfy.utils.load_torch_file(
                    str(path), safe_load=True), weight, weight)
        return io.NodeOutput(comfy_model, clip, vae)
