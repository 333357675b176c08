"""memora.loading / memora.convert: base models and unlearned weights in every released format, on tiny models.

"base" is the tiny SD1-layout model with seed 0, "other" the same architecture with seed 1: every unlearned file is
made from "other", applied to a clone of "base", and the result must equal "other" exactly where the file covers it
(or its fp16 rounding) and "base" everywhere else.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from tiny_models import make_tiny_model
from memora.convert import model_to_compvis
from memora.errors import InputError, UnsafeFileError, WeightFormatError
from memora.io import save_json, save_safetensors, save_torch
from memora.loading import apply_unlearned, inspect_weights, load_base, load_model
from memora.model import Provenance
from memora.sd1 import write_config_folder

COMPONENTS = ("unet", "text_encoder", "vae")


class CustomObject:
    """Pickled inside a .pt file: loading it would run code, so the loader must refuse it."""

    def __init__(self):
        self.payload = torch.zeros(2)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base():
    return make_tiny_model(0)


@pytest.fixture(scope="module")
def other():
    return make_tiny_model(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    """Shared files: the base as a CompVis single file."""
    folder = tmp_path_factory.mktemp("loading")
    ckpt = save_safetensors(model_to_compvis(base), folder / "base.safetensors")
    return {"folder": folder, "base_ckpt": ckpt}


@pytest.fixture(scope="module")
def _work_model(base):
    return base.clone()


@pytest.fixture
def work(_work_model, base):
    """A model equal to ``base``, restored in place before each test (cheaper than a deep copy per test)."""
    with torch.no_grad():
        for component in COMPONENTS:
            target = getattr(_work_model, component).state_dict()
            for key, value in getattr(base, component).state_dict().items():
                target[key].copy_(value)
    _work_model.provenance = Provenance()
    return _work_model


def state(model, component):
    return getattr(model, component).state_dict()


def max_diff(a: dict, b: dict, keys=None) -> float:
    keys = list(a) if keys is None else list(keys)
    return max(((a[k].float() - b[k].float()).abs().max().item() for k in keys), default=0.0)


def assert_equal_to(model, ref, component, keys=None):
    a, b = state(model, component), state(ref, component)
    assert set(a) == set(b)
    assert max_diff(a, b, keys) == 0.0


def assert_fp16_of(model, ref, component):
    a = state(model, component)
    b = {k: v.half().float() if v.is_floating_point() else v for k, v in state(ref, component).items()}
    assert max_diff(a, b) == 0.0
    assert max_diff(a, state(ref, component)) > 0.0  # fp16 rounding really happened


def text_inner(key: str) -> str:
    return key[len("text_model."):] if key.startswith("text_model.") else key


# ----------------------------------------------------------------------------------- CompVis single file
def test_compvis_round_trip_is_exact(base, files):
    sd = model_to_compvis(base)
    assert len(sd) == sum(len(getattr(base, c).state_dict()) for c in COMPONENTS) + 1  # + position_ids
    assert sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (32, 32)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert sd["first_stage_model.decoder.up.3.block.0.conv1.weight"].shape[0] == 64  # up.3 = diffusers up_blocks.0
    assert sd["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [list(range(77))]
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in sd)

    model = load_base(files["base_ckpt"])
    for component in COMPONENTS:
        assert_equal_to(model, base, component)
    assert list(model.unet.config.block_out_channels) == [32, 32, 64, 64]
    assert model.unet.config.cross_attention_dim == 32
    assert model.text_encoder.config.num_hidden_layers == 2
    assert model.provenance.base == str(files["base_ckpt"])
    assert model.dtype == torch.float32 and not any(p.requires_grad for p in model.unet.parameters())
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = base.encode_prompt("a photo of a cat")
    assert torch.equal(model.encode_prompt("a photo of a cat"), emb)
    assert torch.equal(model.unet(x, 10, encoder_hidden_states=emb).sample,
                       base.unet(x, 10, encoder_hidden_states=emb).sample)


def test_sd1_sizes_are_detected_from_shapes():
    """Real SD 1.x shapes (meta tensors: no memory): 1131 single-file tensors, configs read back exactly."""
    from memora import sd1
    from memora.convert import detect_compvis_configs
    from memora.model import DiffusionModel

    sd = model_to_compvis(DiffusionModel(**sd1.build_components("sd1", meta=True)))
    assert len(sd) == 1131
    configs = detect_compvis_configs(sd)
    assert configs["unet"] == sd1.unet_config("sd1")
    assert configs["vae"] == sd1.vae_config("sd1")
    assert configs["text_encoder"] == sd1.text_encoder_config("sd1")
    sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.empty(
        320, 1024, device="meta")
    with pytest.raises(WeightFormatError, match="SD 2.x checkpoint.*width 1024"):
        detect_compvis_configs(sd)


def test_diffusers_from_single_file_reads_our_checkpoint(base, files, tmp_path):
    from diffusers import StableDiffusionPipeline

    config = write_config_folder(tmp_path / "config", "tiny")
    pipe = StableDiffusionPipeline.from_single_file(str(files["base_ckpt"]), config=str(config),
                                                    local_files_only=True, safety_checker=None)
    for component in COMPONENTS:
        a, b = getattr(pipe, component).state_dict(), state(base, component)
        assert set(a) == set(b)
        assert max_diff(a, b) == 0.0


def test_load_base_ckpt_wrapped_fp16(base, files):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model_to_compvis(base).items()}
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # LDM buffers and EMA state are ignored, not refused
    sd["model_ema.decay"] = torch.tensor(0.9999)
    path = save_torch({"state_dict": sd, "global_step": 470000, "epoch": 6}, files["folder"] / "base_fp16.ckpt")
    model = load_base(path, dtype=torch.float32)
    assert model.dtype == torch.float32
    for component in COMPONENTS:
        assert_fp16_of(model, base, component)
    half = load_base(path, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.text_encoder.dtype == torch.float16 and half.vae.dtype == torch.float16


def test_load_base_diffusers_folder_with_pndm_scheduler(base, tmp_path):
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    pndm = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         steps_offset=1)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=pndm, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd")
    assert json.loads((tmp_path / "sd" / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "PNDMScheduler"

    model = load_base(tmp_path / "sd")
    for component in COMPONENTS:
        assert_equal_to(model, base, component)
    s = model.scheduler
    assert type(s) is DDIMScheduler
    assert (s.config.clip_sample, s.config.set_alpha_to_one, s.config.steps_offset) == (False, False, 1)
    assert torch.equal(s.alphas_cumprod, base.scheduler.alphas_cumprod)
    assert torch.equal(model.encode_prompt("a photo of a cat"), base.encode_prompt("a photo of a cat"))

    config_file = tmp_path / "sd" / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "cross_attention_dim": 1024, "use_linear_projection": True}))
    with pytest.raises(WeightFormatError, match="SD 2.x UNet.*wrong base model"):
        load_base(tmp_path / "sd")


def test_load_base_refusals(base, tmp_path):
    sd = model_to_compvis(base)
    sd2 = dict(sd)
    sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] = torch.zeros(32, 32)  # SD 2.x: linear proj_in
    with pytest.raises(WeightFormatError, match="SD 2.x.*wrong base model"):
        load_base(save_safetensors(sd2, tmp_path / "sd2.safetensors"))
    openclip = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    openclip["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(96, 32)
    with pytest.raises(WeightFormatError, match="SD 2.x"):
        load_base(save_safetensors(openclip, tmp_path / "openclip.safetensors"))
    incomplete = {k: v for k, v in sd.items() if "input_blocks.4.0.in_layers.0" not in k}
    with pytest.raises(WeightFormatError, match="lacks 2 of 684.*must be complete"):
        load_base(save_safetensors(incomplete, tmp_path / "incomplete.safetensors"))
    with pytest.raises(WeightFormatError, match="not an SD 1.x single-file checkpoint"):
        load_base(save_safetensors(base.unet.state_dict(), tmp_path / "unet_only.safetensors"))
    with pytest.raises(InputError, match="not found"):
        load_base(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------- unlearned: UNet files
def test_diffusers_unet_pt_esd_style(base, work, other, tmp_path):
    path = save_torch(state(other, "unet"), tmp_path / "ESD-Nudity-Diffusers-UNet.pt")
    model = work
    reports = apply_unlearned(model, path)
    assert [(r.component, r.naming, r.matched, r.total, r.partial) for r in reports] == \
        [("unet", "diffusers", 684, 684, False)]
    assert 0 < reports[0].changed <= 684 and reports[0].dtype == "float32"
    assert_equal_to(model, other, "unet")
    assert_equal_to(model, base, "text_encoder")
    assert_equal_to(model, base, "vae")
    assert model.provenance.unlearned == [str(path)] and model.provenance.reports == reports


def test_wrapped_fp16_with_module_prefix(work, other, tmp_path):
    sd = {"module." + k: v.half() for k, v in state(other, "unet").items()}
    path = save_torch({"state_dict": sd, "epoch": 3, "optimizer": {"lr": 1e-5}}, tmp_path / "salun.pth")
    model = work
    (report,) = apply_unlearned(model, path)
    assert report.dtype == "float16" and report.matched == 684 and model.dtype == torch.float32
    assert "unwrapped state_dict" in report.note and "epoch" in report.note
    assert_fp16_of(model, other, "unet")


def test_nested_wrappers_and_compile_prefix(work, other, tmp_path):
    sd = {"_orig_mod." + k: v for k, v in state(other, "unet").items()}
    path = save_torch({"model": {"params": sd}}, tmp_path / "compiled.pt")
    model = work
    apply_unlearned(model, path)
    assert_equal_to(model, other, "unet")


def test_partial_cross_attention_file(base, work, other, tmp_path):
    kv = [k for k in state(other, "unet") if ".attn2.to_k." in k or ".attn2.to_v." in k]
    assert len(kv) == 32
    path = save_safetensors({k: state(other, "unet")[k] for k in kv}, tmp_path / "uce_kv.safetensors")
    model = work
    (report,) = apply_unlearned(model, path)
    assert (report.matched, report.total, report.partial, len(report.missing)) == (32, 684, True, 652)
    assert report.changed == 32
    assert_equal_to(model, other, "unet", keys=kv)
    rest = [k for k in state(base, "unet") if k not in kv]
    assert_equal_to(model, base, "unet", keys=rest)

    strict = base.clone()
    with pytest.raises(WeightFormatError, match="covers 32 of 684 tensors of the unet"):
        apply_unlearned(strict, path, allow_partial=False)
    assert_equal_to(strict, base, "unet")


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "", "diffusion_model."])
def test_compvis_unet_files(base, work, other, tmp_path, prefix):
    unet_part = {k[len("model.diffusion_model."):]: v for k, v in model_to_compvis(other).items()
                 if k.startswith("model.diffusion_model.")}
    path = save_safetensors({prefix + k: v for k, v in unet_part.items()}, tmp_path / "esd_compvis.safetensors")
    model = work
    (report,) = apply_unlearned(model, path)
    assert (report.component, report.naming, report.matched, report.partial) == ("unet", "compvis", 684, False)
    assert_equal_to(model, other, "unet")
    assert_equal_to(model, base, "text_encoder")


def test_complete_single_file_unlearned_checkpoint(work, other, tmp_path):
    sd = model_to_compvis(other)
    sd["betas"] = torch.linspace(0.00085, 0.012, 1000)
    path = save_torch({"state_dict": sd, "global_step": 1000}, tmp_path / "esd_full.ckpt")
    model = work
    reports = apply_unlearned(model, path)
    assert sorted((r.component, r.naming, r.matched, r.partial) for r in reports) == \
        [("text_encoder", "compvis", 36, False), ("unet", "compvis", 684, False), ("vae", "compvis", 244, False)]
    assert all("non-weight tensors ignored" in r.note for r in reports)
    for component in COMPONENTS:
        assert_equal_to(model, other, component)


@pytest.mark.parametrize("layout", ["prefixed", "nested"])
def test_prefixed_and_component_dicts(base, work, other, tmp_path, layout):
    if layout == "prefixed":  # {"unet.down_blocks...": ..., "text_encoder.encoder.layers...": ...}
        obj = {**{"unet." + k: v for k, v in state(other, "unet").items()},
               **{"text_encoder." + k: v for k, v in state(other, "text_encoder").items()}}
        path = save_safetensors(obj, tmp_path / "prefixed.safetensors")
    else:  # {"unet": {...}, "text_encoder": {...}}
        path = save_torch({"unet": state(other, "unet"), "text_encoder": state(other, "text_encoder")},
                          tmp_path / "nested.pt")
    model = work
    reports = apply_unlearned(model, path)
    assert sorted((r.component, r.matched) for r in reports) == [("text_encoder", 36), ("unet", 684)]
    assert_equal_to(model, other, "unet")
    assert_equal_to(model, other, "text_encoder")
    assert_equal_to(model, base, "vae")


# ------------------------------------------------------------------------------ unlearned: text encoders
@pytest.mark.parametrize("naming,prefix,expected", [
    ("t4", "text_encoder.text_model.", "transformers4"),  # AdvUnlearn's .pt files
    ("t4", "text_model.", "transformers4"),
    ("t5", "", "transformers5"),
    ("t5", "text_encoder.", "transformers5"),
    ("ldm", "cond_stage_model.transformer.text_model.", "compvis"),
])
def test_text_encoder_namings(base, work, other, tmp_path, naming, prefix, expected):
    sd = {prefix + text_inner(k): v for k, v in state(other, "text_encoder").items()}
    if naming != "t5":
        sd[prefix + "embeddings.position_ids"] = torch.arange(77)[None]  # transformers 4 saved it
    path = save_torch(sd, tmp_path / "AdvUnlearn_Nudity_text_encoder_full.pt")
    model = work
    (report,) = apply_unlearned(model, path)
    assert (report.component, report.naming, report.matched, report.total, report.partial) == \
        ("text_encoder", expected, 36, 36, False)
    assert_equal_to(model, other, "text_encoder")
    assert_equal_to(model, base, "unet")
    assert torch.equal(model.encode_prompt("a photo"), other.encode_prompt("a photo"))


def test_text_encoder_layer0_partial(base, work, other, tmp_path):
    sd = {"text_encoder.text_model." + text_inner(k): v for k, v in state(other, "text_encoder").items()
          if ".layers.0." in k}
    path = save_torch(sd, tmp_path / "AdvUnlearn_Parachute_text_encoder_layer0.pt")
    model = work
    (report,) = apply_unlearned(model, path)
    assert (report.matched, report.total, report.partial) == (16, 36, True)
    layer0 = [k for k in state(base, "text_encoder") if ".layers.0." in k]
    assert_equal_to(model, other, "text_encoder", keys=layer0)
    assert_equal_to(model, base, "text_encoder", keys=[k for k in state(base, "text_encoder") if k not in layer0])


def test_text_encoder_model_folder(work, other, tmp_path):
    other.text_encoder.save_pretrained(tmp_path / "nudity_unlearned")  # OPTML-Group/AdvUnlearn HF subfolders
    model = work
    (report,) = apply_unlearned(model, tmp_path / "nudity_unlearned")
    assert report.component == "text_encoder" and report.matched == 36
    assert_equal_to(model, other, "text_encoder")


def test_pipeline_folder_mace_style(work, other, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=other.vae, text_encoder=other.text_encoder, tokenizer=other.tokenizer,
                                   unet=other.unet, scheduler=other.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "MACE" / "nudity")
    model = work
    reports = apply_unlearned(model, tmp_path / "MACE" / "nudity")
    # transformers 5 saves the text encoder flattened (encoder.layers.*); a transformers 4 folder has text_model.*
    assert sorted((r.component, r.naming, r.matched, r.partial) for r in reports) == [
        ("text_encoder", "transformers5", 36, False), ("unet", "diffusers", 684, False),
        ("vae", "diffusers", 244, False)]
    assert all("pipeline folder" in r.note and r.changed > 0 for r in reports)
    for component in COMPONENTS:
        assert_equal_to(model, other, component)
    assert model.scheduler is not None and type(model.scheduler).__name__ == "DDIMScheduler"


# ------------------------------------------------------------------------------------- unlearned: LoRA
def _peft_unet(base, targets=("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"), r=4, alpha=8):
    """A clone of base whose UNet carries a PEFT LoRA with random (non-zero) up matrices."""
    from peft import LoraConfig

    model = base.clone()
    model.unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian",
                                      target_modules=list(targets)))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _peft_merged(model):
    """PEFT's own merge of the adapter into the weights (on a copy)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(model)
    for module in merged.unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return merged


def _unet_out(model):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return model.unet(x, 500, encoder_hidden_states=cond).sample


@pytest.fixture(scope="module")
def lora_model(base):
    from peft.utils import get_peft_model_state_dict

    model = _peft_unet(base)
    merged = _peft_merged(model)
    return model, get_peft_model_state_dict(model.unet), _unet_out(model), _unet_out(base), merged


@pytest.mark.parametrize("layout", ["kohya", "kohya_compvis", "diffusers", "peft_metadata", "peft_folder"])
def test_lora_merge_equals_peft_forward(base, work, lora_model, tmp_path, layout):
    from memora.convert import diffusers_to_compvis

    peft_model, peft_sd, expected, base_out, peft_merged = lora_model
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in peft_sd})
    assert len(modules) == 16 * 8 + 16 + 22  # 16 transformer blocks x 8 attention linears, proj_in, resnet conv1
    pair = {m: (peft_sd[m + ".lora_A.weight"], peft_sd[m + ".lora_B.weight"]) for m in modules}
    adapter_meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    if layout in ("kohya", "kohya_compvis"):
        names = {m: m for m in modules}
        if layout == "kohya_compvis":
            table = diffusers_to_compvis("unet", [m + ".weight" for m in modules], dict(base.unet.config))
            names = {m: table[m + ".weight"][0][:-len(".weight")] for m in modules}
        sd = {}
        for m, (a, b) in pair.items():
            name = "lora_unet_" + names[m].replace(".", "_")
            sd.update({name + ".lora_down.weight": a, name + ".lora_up.weight": b, name + ".alpha": torch.tensor(8.0)})
        path = save_safetensors(sd, tmp_path / "spm_kohya.safetensors")
    elif layout == "diffusers":
        sd = {f"unet.{m}.lora.down.weight": a for m, (a, _) in pair.items()}
        sd.update({f"unet.{m}.lora.up.weight": b for m, (_, b) in pair.items()})
        path = save_safetensors(sd, tmp_path / "lora_diffusers.safetensors", metadata=adapter_meta)
    elif layout == "peft_metadata":
        path = save_safetensors({"unet." + k: v for k, v in peft_sd.items()}, tmp_path / "lora_peft.safetensors",
                                metadata=adapter_meta)
    else:
        folder = tmp_path / "adapter"
        save_safetensors({"base_model.model." + k: v for k, v in peft_sd.items()}, folder / "adapter_model.safetensors")
        save_json({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["to_q"]},
                  folder / "adapter_config.json")
        path = folder

    model = work
    (report,) = apply_unlearned(model, path)
    assert (report.component, report.matched, report.changed) == ("unet", len(modules), len(modules))
    assert "scale alpha/rank = 2" in report.note
    assert not any("lora" in k for k in model.unet.state_dict())  # a plain model: merged, no adapter
    merged_weights = {k.replace(".base_layer.", "."): v for k, v in peft_merged.unet.state_dict().items()
                      if "lora_" not in k}
    assert max_diff(state(model, "unet"), merged_weights) < 1e-6  # the same weights as PEFT's own merge()
    assert max_diff(state(model, "unet"), state(base, "unet")) > 0.01
    if layout != "kohya":
        return  # same weights, same function: one forward comparison (below) is enough
    out = _unet_out(model)
    effect = (expected - base_out).abs().max().item()
    assert effect > 0.5
    # the merged model computes what the PEFT-applied (unmerged) model computes; merged vs unmerged differ only by
    # float summation order (PEFT's own merge() is equally far: ~1e-3 on this random, badly conditioned tiny UNet)
    assert (out - expected).abs().max().item() < 2e-3 * effect


def test_lora_without_alpha_merges_at_scale_one(base, work, tmp_path):
    from peft.utils import get_peft_model_state_dict

    peft_model = _peft_unet(base, targets=("to_k",), r=2, alpha=2)
    path = save_safetensors(get_peft_model_state_dict(peft_model.unet), tmp_path / "noalpha.safetensors")
    model = work
    (report,) = apply_unlearned(model, path)
    assert report.naming == "peft" and "scale 1" in report.note
    merged_weights = {k.replace(".base_layer.", "."): v for k, v in _peft_merged(peft_model).unet.state_dict().items()
                      if "lora_" not in k}
    assert max_diff(state(model, "unet"), merged_weights) < 1e-6
    assert max_diff(state(model, "unet"), state(base, "unet")) > 0.01


def test_lora_legacy_key_variants(base, work, tmp_path):
    """Old diffusers attention-processor names and ``lora_linear_layer`` names merge into the right weights."""
    g = torch.Generator().manual_seed(6)
    block = "down_blocks.1.attentions.0.transformer_blocks.0"
    down_k, up_k = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    down_o, up_o = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    down_f, up_f = torch.randn(2, 32, generator=g), torch.randn(256, 2, generator=g)  # GEGLU: 2 x 4 x 32
    sd = {f"unet.{block}.attn2.processor.to_k_lora.down.weight": down_k,
          f"unet.{block}.attn2.processor.to_k_lora.up.weight": up_k,
          f"unet.{block}.attn1.processor.to_out_lora.down.weight": down_o,
          f"unet.{block}.attn1.processor.to_out_lora.up.weight": up_o,
          f"unet.{block}.ff.net.0.proj.lora_linear_layer.down.weight": down_f,
          f"unet.{block}.ff.net.0.proj.lora_linear_layer.up.weight": up_f}
    model = work
    (report,) = apply_unlearned(model, save_torch(sd, tmp_path / "pytorch_lora_weights.bin"))
    assert (report.naming, report.matched) == ("diffusers_lora", 3)
    after, before = state(model, "unet"), state(base, "unet")
    for key, (down, up) in {f"{block}.attn2.to_k.weight": (down_k, up_k),
                            f"{block}.attn1.to_out.0.weight": (down_o, up_o),
                            f"{block}.ff.net.0.proj.weight": (down_f, up_f)}.items():
        assert (after[key] - (before[key] + up @ down)).abs().max().item() < 1e-5
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) == 3


def test_text_encoder_kohya_lora(base, work, tmp_path):
    from peft import LoraConfig, inject_adapter_in_model

    te = copy.deepcopy(base.text_encoder)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "fc1"]), te)
    g = torch.Generator().manual_seed(4)
    sd = {}
    with torch.no_grad():
        for name, module in te.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=g))
                kohya = "lora_te_text_model_" + name.replace(".", "_") if not name.startswith("text_model.") else \
                    "lora_te_" + name.replace(".", "_")
                sd[kohya + ".lora_down.weight"] = module.lora_A["default"].weight.clone()
                sd[kohya + ".lora_up.weight"] = module.lora_B["default"].weight.clone()
                sd[kohya + ".alpha"] = torch.tensor(4.0)
    assert len(sd) == 2 * 3 * 3
    ids = base.tokenize(["a photo of a cat"])
    with torch.no_grad():
        expected = te(ids)[0]
    model = work
    (report,) = apply_unlearned(model, save_safetensors(sd, tmp_path / "te_lora.safetensors"))
    assert (report.component, report.naming, report.matched) == ("text_encoder", "kohya", 6)
    with torch.no_grad():
        out = model.text_encoder(ids)[0]
    assert (expected - base.encode_prompt("a photo of a cat")).abs().max().item() > 0.05
    assert (out - expected).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------- refusals
def test_misspelt_key_names_the_closest_key(base, work, other, tmp_path):
    sd = state(other, "unet")
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    sd[key.replace("to_k", "to_kk")] = sd.pop(key)
    model = work
    closest = re.escape(f"closest expected key: '{key}'")
    with pytest.raises(WeightFormatError, match=rf"(?s)1 of 684 tensors.*to_kk.*{closest}"):
        apply_unlearned(model, save_torch(sd, tmp_path / "typo.pt"))
    assert_equal_to(model, base, "unet")  # nothing was loaded
    assert model.provenance.unlearned == []


def test_sd2_like_shape_is_refused(base, work, other, tmp_path):
    sd = state(other, "unet")
    for k in [k for k in sd if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]:
        sd[k] = torch.zeros(sd[k].shape[0], 64)  # a 64-wide context instead of 32 (as 1024 vs 768)
    model = work
    with pytest.raises(WeightFormatError, match=r"(?s)32 tensors have shapes.*\[32, 64\] in the file but \[32, 32\].*"
                                                r"wrong base model\? SD 2\.x/SDXL weights don't fit SD 1\.x"):
        apply_unlearned(model, save_torch(sd, tmp_path / "sd2.pt"))
    assert_equal_to(model, base, "unet")


def test_other_architectures_and_unknown_naming(base, work, tmp_path):
    model = work
    with pytest.raises(WeightFormatError, match="(?s)could not recognise the key naming.*'foo.bar'"):
        apply_unlearned(model, save_safetensors({"foo.bar": torch.zeros(3)}, tmp_path / "foo.safetensors"))
    with pytest.raises(WeightFormatError, match="SDXL.*wrong base model"):
        apply_unlearned(model, save_safetensors({"conditioner.embedders.0.transformer.x": torch.zeros(3)},
                                                tmp_path / "sdxl.safetensors"))
    with pytest.raises(WeightFormatError, match="LyCORIS"):
        apply_unlearned(model, save_safetensors({"lora_unet_conv_in.hada_w1_a": torch.zeros(3, 2)},
                                                tmp_path / "loha.safetensors"))
    module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    lora = {module + "k.lora_down.weight": torch.zeros(2, 32), module + "k.lora_up.weight": torch.zeros(32, 2)}
    with pytest.raises(WeightFormatError, match=f"(?s)closest expected module: '{module}'"):
        apply_unlearned(model, save_safetensors(lora, tmp_path / "lora_typo.safetensors"))
    assert_equal_to(model, base, "unet")


def test_unsafe_truncated_and_missing_files(base, work, other, tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"weights": state(other, "unet"), "extra": CustomObject()}, unsafe)
    model = work
    with pytest.raises(UnsafeFileError, match="needs Python code"):
        apply_unlearned(model, unsafe)
    with pytest.raises(UnsafeFileError):
        inspect_weights(unsafe)
    with pytest.raises(UnsafeFileError):
        load_base(unsafe)

    full = save_safetensors(state(other, "unet"), tmp_path / "full.safetensors")
    data = full.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        apply_unlearned(model, truncated)
    with pytest.raises(InputError, match="not found"):
        apply_unlearned(model, tmp_path / "nope.pt")
    with pytest.raises(InputError, match="not a diffusers pipeline"):
        apply_unlearned(model, tmp_path)  # a folder with no model inside
    assert_equal_to(model, base, "unet")


# --------------------------------------------------------------------------------- inspect / load_model
def test_inspect_weights_reports_without_mutating(base, other, files, tmp_path):
    kv = {k: v.half() for k, v in state(other, "unet").items() if ".attn2.to_k." in k}
    path = save_safetensors(kv, tmp_path / "kv.safetensors")
    before = state(base, "unet")

    info = inspect_weights(path)
    assert (info["n_tensors"], info["dtypes"], info["format"], info["kind"]) == (16, {"float16": 16}, "weights", "file")
    assert info["components"][0]["component"] == "unet" and info["components"][0]["naming"] == "diffusers"
    assert info["fits"] and not info["fits_sd1_sizes"] and info["base"] is None  # tiny shapes vs real SD 1.x
    assert info["size_bytes"] == path.stat().st_size
    json.dumps(info)

    info = inspect_weights(path, base=base)
    (report,) = info["reports"]
    assert (report["matched"], report["total"], report["partial"], report["missing_count"]) == (16, 684, True, 668)
    assert info["fits"] and info["problems"] == []
    json.dumps(info)
    assert max_diff(before, state(base, "unet")) == 0.0

    info = inspect_weights(path, base=files["base_ckpt"])
    assert info["reports"][0]["matched"] == 16 and info["base"] == str(files["base_ckpt"])

    bad = dict(kv)
    bad["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_kk.weight"] = bad.pop(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    info = inspect_weights(save_safetensors(bad, tmp_path / "bad.safetensors"), base=base)
    assert not info["fits"] and info["unrecognised"][0]["closest"].endswith("attn2.to_k.weight")


def test_inspect_lora(base, lora_model, tmp_path):
    _, peft_sd, _, _, _ = lora_model
    path = save_safetensors({"unet." + k: v for k, v in peft_sd.items()}, tmp_path / "l.safetensors",
                            metadata={"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})})
    info = inspect_weights(path, base=base)
    assert info["format"] == "lora" and info["lora"]["ranks"] == [4] and info["lora"]["naming"] == "peft"
    assert info["fits"] and info["reports"][0]["matched"] == 166
    json.dumps(info)


def test_load_model_applies_in_order(base, other, files, tmp_path):
    unet_file = save_torch(state(other, "unet"), tmp_path / "unet.pt")
    te_file = save_torch({"text_encoder.text_model." + text_inner(k): v
                          for k, v in state(other, "text_encoder").items()}, tmp_path / "te.pt")
    model = load_model(files["base_ckpt"], [unet_file, te_file], method="ESD+AdvUnlearn")
    assert model.provenance.base == str(files["base_ckpt"]) and model.provenance.method == "ESD+AdvUnlearn"
    assert model.provenance.unlearned == [str(unet_file), str(te_file)]
    assert [r.component for r in model.provenance.reports] == ["unet", "text_encoder"]
    assert_equal_to(model, other, "unet")
    assert_equal_to(model, other, "text_encoder")
    assert_equal_to(model, base, "vae")
    assert load_model(files["base_ckpt"]).provenance.unlearned == []
