"""LoRA recipe, kohya export and loading (memora.lora) on the tiny SD1-layout model."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch
from tiny_models import make_tiny_model
from safetensors.torch import load_file, save_file

from memora.config import LoraTrainingConfig
from memora.errors import InputError, WeightFormatError
from memora.lora import (active_lora_weights, load_lora, read_lora_metadata, save_lora, set_lora_weights,
                         train_lora)

PROMPT = "a photo of the parachute"
# The kohya names ComfyUI maps for SD 1.x (mid_block has no index: lora_unet_mid_block_attentions_0_...).
KOHYA_KEY = re.compile(r"^lora_unet_(down_blocks_\d|mid_block|up_blocks_\d)_.*_(to_q|to_k|to_v|to_out_0)\."
                       r"(lora_down\.weight|lora_up\.weight|alpha)$")


@functools.lru_cache(maxsize=1)
def _base_model():
    return make_tiny_model(0)


def fresh_model():
    """A copy of the tiny model (building one costs VAE encodes; copying does not). The cached one is never used."""
    return _base_model().clone()


def small_config(**overrides) -> LoraTrainingConfig:
    base = dict(rank=4, alpha=8.0, steps=2, batch_size=1, grad_accum=1, learning_rate=1e-2, resolution=64)
    base.update(overrides)
    return LoraTrainingConfig(**base)


def probe_inputs(model):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([700, 30])
    emb = model.encode_prompt([PROMPT, "a red square"])
    return x, t, emb


@torch.no_grad()
def unet_out(unet, inputs):
    x, t, emb = inputs
    return unet(x, t, encoder_hidden_states=emb).sample


def lora_tensors(path):
    return {k: v for k, v in load_file(str(path)).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ):
    """One training run (rank 4, alpha 8 != rank), its file and the trained UNet's output on fixed inputs."""
    folder = tmp_path_factory.mktemp("trained")
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 64, 64, generator=g)
    model = fresh_model()
    events = []
    result = train_lora(model, images, PROMPT, small_config(), out_path=folder / "memora.safetensors",
                        metadata={"inversion": {"start_step": 15}}, callback=events.append)
    inputs = probe_inputs(model)
    out = unet_out(model.unet, inputs)
    model.unet.disable_adapters()
    base_out = unet_out(model.unet, inputs)
    model.unet.enable_adapters()
    return {"model": model, "result": result, "events": events, "inputs": inputs, "out": out,
            "base_out": base_out, "images": images}


def test_training_result_and_progress(trained):
    result, events = trained["result"], trained["events"]
    assert result.steps_done == 2 and result.steps_total == 2 and not result.interrupted
    assert len(result.losses) == 2 and all(0 < loss < 10 for loss in result.losses)
    assert [e.step for e in events] == [1, 2] and {e.phase for e in events} == {"train"}
    assert events[0].info["lr"] == pytest.approx(1e-2)  # cosine, no warm-up: full lr on the first update
    assert events[1].info["lr"] == pytest.approx(0.5e-2)
    assert [e.loss for e in events] == result.losses
    # the LoRA really changes the UNet (so the equality checks below are meaningful)
    assert (trained["out"] - trained["base_out"]).abs().max() > 1e-3
    # LoRA weights are float32 (peft re-enables their requires_grad on enable_adapters); the base stays frozen
    named = dict(trained["model"].unet.named_parameters())
    assert all(p.dtype == torch.float32 for n, p in named.items() if "lora_" in n)
    assert not any(p.requires_grad for n, p in named.items() if "lora_" not in n)


def test_saved_file_keys_alpha_and_metadata(trained):
    path = trained["result"].path
    tensors = lora_tensors(path)
    assert len(tensors) == 3 * 128  # 32 attention layers x (q, k, v, out) x (down, up, alpha)
    bad = [k for k in tensors if not KOHYA_KEY.match(k)]
    assert bad == []
    assert all(v.dtype == torch.float32 for v in tensors.values())
    alphas = {k: v for k, v in tensors.items() if k.endswith(".alpha")}
    assert len(alphas) == 128 and all(v.ndim == 0 and v.item() == 8.0 for v in alphas.values())
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert tensors[f"{key}.lora_down.weight"].shape == (4, 32)  # [r, in] (cross-attention: text width 32)
    assert tensors[f"{key}.lora_up.weight"].shape == (32, 4)  # [out, r]

    meta = read_lora_metadata(path)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8"
    assert meta["ss_network_module"] == "networks.lora"
    info = meta["memora"]
    assert info["prompt"] == PROMPT and info["steps_done"] == 2 and info["steps_total"] == 2
    assert info["interrupted"] is False and info["rank"] == 4 and info["alpha"] == 8.0
    assert info["config"]["learning_rate"] == 1e-2
    assert info["config"]["target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]
    assert info["inversion"] == {"start_step": 15} and "created" in info and "memora_version" in info


def test_file_loads_in_diffusers_pipeline_and_reproduces_unet(trained):
    from diffusers import StableDiffusionPipeline

    fresh = fresh_model()
    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer,
                                   unet=fresh.unet, scheduler=fresh.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(trained["result"].path), adapter_name="memora")
    diff = (unet_out(pipe.unet, trained["inputs"]) - trained["out"]).abs().max()
    assert diff <= 1e-5


def test_load_lora_reproduces_unet(trained):
    fresh = fresh_model()
    name = load_lora(fresh, trained["result"].path)
    assert name == "memora"
    assert active_lora_weights(fresh) == {"memora": pytest.approx(1.0)}
    assert (unet_out(fresh.unet, trained["inputs"]) - trained["out"]).abs().max() <= 1e-5
    assert fresh.provenance.loras[-1]["naming"] == "kohya" and fresh.provenance.loras[-1]["modules"] == 128

    # weight 0 = no effect; weight scales the delta linearly
    set_lora_weights(fresh, {"memora": 0.0})
    assert (unet_out(fresh.unet, trained["inputs"]) - trained["base_out"]).abs().max() <= 1e-6
    assert fresh.provenance.loras[-1]["weight"] == 0.0


def test_save_never_overwrites(trained, tmp_path):
    path = trained["result"].path
    with pytest.raises(FileExistsError):
        save_lora(trained["model"], path)
    with pytest.raises(FileExistsError):
        train_lora(fresh_model(), trained["images"], PROMPT, small_config(), out_path=path)
    with pytest.raises(InputError, match="alpha"):
        save_lora(trained["model"], tmp_path / "x.safetensors", alpha=4)
    assert not (tmp_path / "x.safetensors").exists()
    save_lora(trained["model"], tmp_path / "x.safetensors", alpha=8)
    assert load_file(str(tmp_path / "x.safetensors")).keys() == load_file(str(path)).keys()


def test_training_is_deterministic_and_seeded():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 64, 64, generator=g)
    state = []
    # the second run also recomputes activations (gradient checkpointing, the CUDA default): same numbers
    for seed, checkpointing in ((11, False), (11, True), (12, False)):
        model = fresh_model()
        train_lora(model, images, PROMPT, small_config(seed=seed, grad_accum=2, steps=1, random_flip=False,
                                                        gradient_checkpointing=checkpointing))
        assert not model.unet.is_gradient_checkpointing  # switched off again after training
        state.append({n: p.detach().clone() for n, p in model.unet.named_parameters() if "lora_" in n})
    assert state[0].keys() == state[1].keys()
    assert all(torch.equal(state[0][k], state[1][k]) for k in state[0])
    assert any(not torch.equal(state[0][k], state[2][k]) for k in state[0])


def test_resume_continues_exactly(tmp_path):
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 64, 64, generator=g)
    # batch 2 of 3 images: epochs of 2 updates ([2, 1]), so the checkpoint at 5 is mid-epoch
    config = small_config(steps=10, batch_size=2, checkpoint_every=5, learning_rate=5e-3)
    full = fresh_model()
    result = train_lora(full, images, PROMPT, config, checkpoint_dir=tmp_path / "ck")
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["memora-step00005.safetensors", "memora-step00005.state.pt",
                     "memora-step00010.safetensors", "memora-step00010.state.pt"]
    assert result.checkpoints == [tmp_path / "ck" / "memora-step00005.safetensors",
                                  tmp_path / "ck" / "memora-step00010.safetensors"]
    state = torch.load(tmp_path / "ck" / "memora-step00005.state.pt", weights_only=True)
    assert state["step"] == 5 and len(state["losses"]) == 5
    assert read_lora_metadata(tmp_path / "ck" / "memora-step00005.safetensors")["memora"]["steps_done"] == 5

    resumed = fresh_model()
    events = []
    result2 = train_lora(resumed, images, PROMPT, config, checkpoint_dir=tmp_path / "ck2",
                         resume_from=tmp_path / "ck" / "memora-step00005.state.pt", callback=events.append)
    assert [e.step for e in events] == [6, 7, 8, 9, 10]
    assert result2.steps_done == 10
    assert result2.losses == pytest.approx(result.losses, abs=1e-6)
    a = {n: p for n, p in full.unet.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.unet.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    final_a, final_b = (lora_tensors(tmp_path / d / "memora-step00010.safetensors") for d in ("ck", "ck2"))
    assert max((final_a[k] - final_b[k]).abs().max().item() for k in final_a) <= 1e-6


class Interrupt(BaseException):
    """Like ComfyUI's interruption: not an ``Exception``."""


def test_interruption_writes_partial_lora_and_reraises(tmp_path):
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 64, 64, generator=g)
    model = fresh_model()
    out = tmp_path / "partial.safetensors"

    def stop_at_3(event):
        if event.step == 3:
            raise Interrupt("user pressed cancel")

    with pytest.raises(Interrupt) as info:
        train_lora(model, images, PROMPT, small_config(steps=6, random_flip=False), out_path=out, callback=stop_at_3)
    assert out.exists()
    assert any(str(out) in note for note in getattr(info.value, "__notes__", []))
    assert info.value.memora_train_result.steps_done == 3 and info.value.memora_train_result.interrupted
    meta = read_lora_metadata(out)["memora"]
    assert meta["interrupted"] is True and meta["steps_done"] == 3 and meta["steps_total"] == 6
    # the partial file is a complete LoRA equal to the adapter at the moment of the interruption
    inputs = probe_inputs(model)
    fresh = fresh_model()
    load_lora(fresh, out)
    assert (unet_out(fresh.unet, inputs) - unet_out(model.unet, inputs)).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in model.unet.parameters())


def test_training_inside_inference_mode():
    with torch.inference_mode():
        model = make_tiny_model(0)  # weights created in inference mode, as ComfyUI loaders do
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
        result = train_lora(model, images, PROMPT, small_config(steps=1, random_flip=False))
    assert result.steps_done == 1 and torch.isfinite(torch.tensor(result.losses)).all()
    b = [p for n, p in model.unet.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in b)  # lora_B starts at zero: the update really happened


def test_low_precision_model_trains_float32_lora(tmp_path):
    """A half-precision model (bf16 here; fp16 on CUDA) trains float32 LoRA weights and writes a float32 file."""
    model = fresh_model().to(dtype=torch.bfloat16)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    result = train_lora(model, images, PROMPT, small_config(steps=1, random_flip=False, mixed_precision="bf16"),
                        out_path=tmp_path / "bf16.safetensors")
    assert torch.isfinite(torch.tensor(result.losses)).all()
    named = dict(model.unet.named_parameters())
    assert {p.dtype for n, p in named.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in named.items() if "lora_" not in n} == {torch.bfloat16}
    assert {t.dtype for t in lora_tensors(result.path).values()} == {torch.float32}


def test_training_input_checks(tmp_path):
    model = fresh_model()
    with pytest.raises(InputError, match="64x64"):
        train_lora(model, torch.rand(2, 3, 32, 32), PROMPT, small_config())
    with pytest.raises(InputError, match="checkpoint_dir"):
        train_lora(model, torch.rand(2, 3, 64, 64), PROMPT, small_config(checkpoint_every=1))
    assert not getattr(model.unet, "peft_config", None)


# ----------------------------------------------------------------------------------------- third-party files


def random_factors(model, rank=2, targets=("attn1.to_q", "attn2.to_out.0"), seed=0):
    """``{module name: (down [r, in], up [out, r])}`` for a few attention layers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in model.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(targets):
            out[name] = (torch.randn(rank, module.in_features, generator=g) * 0.3,
                         torch.randn(module.out_features, rank, generator=g) * 0.3)
    return out


def expected_out(model, factors, alpha, inputs):
    """UNet output with the LoRA merged by hand: W + (alpha / r) * up @ down."""
    merged = fresh_model()
    modules = dict(merged.unet.named_modules())
    with torch.no_grad():
        for name, (down, up) in factors.items():
            scale = (alpha if alpha is not None else down.shape[0]) / down.shape[0]
            modules[name].weight += scale * up @ down
    return unet_out(merged.unet, inputs)


@pytest.mark.parametrize("layout", ["kohya", "kohya_no_alpha", "diffusers", "peft"])
def test_load_third_party_layouts(tmp_path, layout):
    model = fresh_model()
    factors = random_factors(model)
    tensors, alpha = {}, 1.0
    for name, (down, up) in factors.items():
        if layout.startswith("kohya"):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
            if layout == "kohya":
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
        elif layout == "diffusers":
            tensors[f"unet.{name}.lora.down.weight"], tensors[f"unet.{name}.lora.up.weight"] = down, up
        else:
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
    if layout != "kohya":
        alpha = None  # no alpha: scale 1 (alpha = rank), as ComfyUI and diffusers read such files
    path = tmp_path / f"{layout}.safetensors"
    save_file(tensors, str(path))
    inputs = probe_inputs(model)
    name = load_lora(model, path, weight=1.0)
    assert name == layout
    assert (unet_out(model.unet, inputs) - expected_out(model, factors, alpha, inputs)).abs().max() <= 1e-5


def test_load_rejects_unknown_and_text_encoder_keys(tmp_path):
    model = fresh_model()
    factors = random_factors(model)
    name, (down, up) = next(iter(factors.items()))
    key = "lora_unet_" + name.replace(".", "_")
    good = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)}

    typo = dict(good)
    misspelt = key.replace("transformer_blocks", "transformerblocks")
    typo[f"{misspelt}.lora_down.weight"] = typo.pop(f"{key}.lora_down.weight")
    save_file(typo, str(tmp_path / "typo.safetensors"))
    with pytest.raises(WeightFormatError, match=re.escape(key)):
        load_lora(model, tmp_path / "typo.safetensors")

    wrong_shape = dict(good)
    wrong_shape[f"{key}.lora_down.weight"] = torch.randn(2, 17)
    save_file(wrong_shape, str(tmp_path / "shape.safetensors"))
    with pytest.raises(WeightFormatError, match="another base model"):
        load_lora(model, tmp_path / "shape.safetensors")

    with_te = dict(good)
    with_te["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(2, 32)
    with_te["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(32, 2)
    save_file(with_te, str(tmp_path / "te.safetensors"))
    with pytest.raises(WeightFormatError, match="text-encoder"):
        load_lora(model, tmp_path / "te.safetensors")
    assert not getattr(model.unet, "peft_config", None)  # failed loads leave no adapter behind
    assert load_lora(model, tmp_path / "te.safetensors", text_encoder="ignore") == "te"
    assert model.provenance.loras[-1]["skipped_text_encoder_keys"] == 2

    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.randn(2, 32)},
              str(tmp_path / "ldm.safetensors"))
    with pytest.raises(WeightFormatError, match="CompVis"):
        load_lora(model, tmp_path / "ldm.safetensors")


def test_metadata_of_foreign_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"ss_network_dim": "8", "memora": json.dumps({"x": 1})})
    assert read_lora_metadata(path) == {"ss_network_dim": "8", "memora": {"x": 1}}
