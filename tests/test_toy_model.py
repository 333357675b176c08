"""The toy model and its shipped weights: SD-1.x classes, loadable, small, documented, and good at its job."""

from __future__ import annotations

import pytest
import torch

from memora.toy import data
from memora.toy.detector import HEADS, concept_head, holdout_accuracy, load_detector
from memora.toy.model import (SHIPPED, UNET_CONFIG, WEIGHTS_DIR, available_models, build_model, load_toy_model,
                              training_facts)
from memora.errors import InputError


def test_the_toy_model_uses_the_sd_classes_in_pixel_space():
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = build_model()
    assert isinstance(model.unet, UNet2DConditionModel) and isinstance(model.text_encoder, CLIPTextModel)
    assert isinstance(model.tokenizer, CLIPTokenizer) and isinstance(model.scheduler, DDIMScheduler)
    assert model.vae is None and model.vae_scale_factor == 1 and model.default_resolution == 16
    assert model.text_encoder.config.max_position_embeddings == model.tokenizer.model_max_length == 16
    assert model.scheduler.config.clip_sample is False and model.scheduler.config.set_alpha_to_one is False
    assert abs(float(model.scheduler.betas[-1]) - 0.02) < 1e-8  # the toy's own noise schedule, not SD's
    emb = model.encode_prompt(["a red circle", ""])
    assert emb.shape == (2, 16, UNET_CONFIG["cross_attention_dim"])
    images = data.make_batch(2, 0).images
    assert torch.allclose(model.decode_latents(model.encode_images(images)), images, atol=1e-6)


def test_all_shipped_weights_are_present_small_and_load():
    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert {SHIPPED[n][0] for n in SHIPPED} | {"detector.safetensors"} <= {f.name for f in files}
    total = sum(f.stat().st_size for f in files)
    assert total < 15e6, f"shipped toy weights are {total / 1e6:.1f} MB"
    assert set(available_models()) == set(SHIPPED)
    base = load_toy_model("base")
    assert base.dtype == torch.float32 and not base.unet.training
    erased = load_toy_model("esd-circle")
    diff = {k for k, v in erased.unet.state_dict().items() if not torch.equal(v, base.unet.state_dict()[k])}
    assert diff and all("attn2." in k for k in diff)  # the ESD-x file patches cross-attention only
    assert erased.provenance.method == "ESD-x" and erased.provenance.unlearned
    with pytest.raises(InputError, match="unknown toy model"):
        load_toy_model("esd-hexagon")


def test_shipped_files_record_their_recipe_and_seeds():
    base = training_facts("base")
    assert base["config"]["model_seed"] == 0 and base["config"]["steps"] >= 1000 and base["seconds"] > 0
    control = training_facts("control")
    assert "circle" not in control["config"]["shapes"]
    assert training_facts("esd-circle")["config"]["params"] in ("x", "xkv")  # ESD-x: cross-attention only
    assert "holdout" in training_facts("detector.safetensors")


def test_detector_held_out_accuracy_is_at_least_95_percent():
    det = load_detector()
    acc = holdout_accuracy(det)  # 2000 clean images from a seed never used in training
    assert acc["shape_accuracy"] >= 0.95, acc
    assert acc["color_accuracy"] >= 0.95 and acc["background_accuracy"] >= 0.95, acc
    assert acc["shape_recall"]["circle"] >= 0.95 and acc["shape_recall"]["other"] >= 0.6, acc
    assert acc["other_labelled_circle"] <= 0.3, acc


def test_detector_answers_concept_questions():
    det = load_detector()
    few = data.concept_images("circle", 4, 123)
    assert det.concept_mask(few.images, "circle").all()
    assert not det.concept_mask(few.images, "square").any()
    blank = data.render([data.ShapeSpec("empty", "red", "gray")])
    assert det.classify(blank)["shape"] == ["empty"]
    assert concept_head("red") == "color" and concept_head("striped") == "texture"
    assert set(HEADS) == {"shape", "color", "background", "texture"}
    with pytest.raises(InputError, match="knows no concept"):
        concept_head("nudity")
    big = torch.nn.functional.interpolate(few.images, size=32, mode="nearest")
    assert det.concept_mask(big, "circle").all()  # other sizes are resized
