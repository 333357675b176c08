"""The MemoRa recovery as a ComfyUI graph (prompts/recovery_tiny.json) on the tiny model, through the real server:
LoadImage x2 -> Batch Images -> Load Unlearned Model -> DDIM Invert -> Slerp Batch -> Regenerate -> SaveImage,
Train MemoRa LoRA -> core Plot Loss Graph, Generate and AutoMemoRa Sampler on the trained model -> PreviewImage.
"""

from __future__ import annotations

import json

import pytest
import torch

from comfy_testing import (CONCEPT_PROMPT, TINY_BASE, TINY_UNLEARNED, comfy_quantize, kohya_modules, load_prompt,
                           png_pixels, read_safetensors)

N_TRANSFORMER_BLOCKS = 16  # SD 1.x layout: down 3x2, mid 1, up 3x3 (the tiny model has the same blocks)


@pytest.fixture(scope="module")
def recovery(comfy_server):
    prompt = load_prompt("recovery_tiny.json")
    prompt_id, entry, log = comfy_server.run(prompt, timeout=400)
    return prompt, entry, log


def _images(dirs, entry, node_id):
    files = [dirs.ui_file(e) for e in entry["outputs"][node_id]["images"]]
    assert files and all(f.is_file() for f in files), files
    return files


def test_recovery_graph_succeeds(recovery, comfy_dirs):
    prompt, entry, log = recovery
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"] is True
    # the regenerated training set: 2 images -> 1 pair x (k + 1 = 3) latents -> 3 images of 64 px
    regenerated = _images(comfy_dirs, entry, "8")
    assert len(regenerated) == 3
    assert all(png_pixels(f).shape == (64, 64, 3) for f in regenerated)
    # the final loss curve shown on the training node, core's loss plot, and the two samplers' images
    assert len(_images(comfy_dirs, entry, "9")) == 1
    assert len(_images(comfy_dirs, entry, "10")) == 1
    assert [png_pixels(f).shape for f in _images(comfy_dirs, entry, "12")] == [(64, 64, 3)] * 2  # Generate
    assert [png_pixels(f).shape for f in _images(comfy_dirs, entry, "14")] == [(64, 64, 3)]  # AutoMemoRa
    assert "lora key not loaded" not in log and "Traceback" not in log


def test_loader_reports_what_it_applied(recovery):
    _, entry, _ = recovery
    text = "\n".join(entry["outputs"]["4"]["text"])
    assert TINY_BASE in text and TINY_UNLEARNED in text
    assert "unet (diffusers)" in text and "partial" not in text


def test_trained_lora_is_a_kohya_file_in_the_loras_folder(recovery, comfy_dirs):
    lora = comfy_dirs.loras / "memora_test" / "recovery_tiny.safetensors"
    assert lora.is_file()
    tensors, metadata = read_safetensors(lora)
    modules = kohya_modules(tensors)
    assert len(modules) == N_TRANSFORMER_BLOCKS * 2 * 4  # attn1/attn2 x to_q/to_k/to_v/to_out.0
    assert all(tensors[f"{m}.alpha"].item() == 4.0 for m in modules)
    assert all(tensors[f"{m}.lora_down.weight"].shape[0] == 4 for m in modules)
    assert max(tensors[f"{m}.lora_up.weight"].abs().max().item() for m in modules) > 0  # it trained
    info = json.loads(metadata["memora"])
    assert info["prompt"] == CONCEPT_PROMPT and info["method"] == "test-erase"
    assert info["steps_done"] == 3 and info["interrupted"] is False
    assert info["comfyui_node"] == "MemoRaTrainLoRA"


def test_cached_model_runs_without_the_lora_trained_on_it(recovery, comfy_server, comfy_dirs, tiny_assets):
    """Outputs are cached and shared: the Load Unlearned Model output reused by a later prompt must still be the
    plain unlearned model, not the model with the LoRA the first prompt trained on the same weights."""
    from memora.loading import load_model
    from memora.lora import load_lora
    from memora.sampling import generate

    prompt = load_prompt("base_after_training_tiny.json")
    _, entry, _ = comfy_server.run(prompt, timeout=120)
    cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and "4" in cached[0], "the loader was not reused from the cache; the test would prove nothing"
    (saved,) = _images(comfy_dirs, entry, "21")
    got = png_pixels(saved).int()

    settings = prompt["20"]["inputs"]
    model = load_model(str(tiny_assets.base), [str(tiny_assets.unlearned)], dtype=torch.float32)
    kwargs = dict(seeds=[settings["seed"]], guidance=settings["guidance"], steps=settings["steps"],
                  scheduler=settings["scheduler"], height=64, width=64)
    plain = comfy_quantize(generate(model, [settings["prompt"]], **kwargs))[0].int()
    load_lora(model, comfy_dirs.loras / "memora_test" / "recovery_tiny.safetensors", weight=1.0)
    with_lora = comfy_quantize(generate(model, [settings["prompt"]], **kwargs))[0].int()

    assert (with_lora - plain).abs().max().item() > 2, "the LoRA changes nothing visible; the test cannot fail"
    assert (got - plain).abs().max().item() <= 1
