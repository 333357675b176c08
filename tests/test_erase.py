"""The erasers (memora.erase): which parameters they train, that they really erase, and how their output loads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from memora.erase import (ESD_U_EXCLUDED, ESDConfig, RemapConfig, RemapData, changed_tensors, erased_state_dict,
                          esd, remap, select_parameters)
from memora.errors import InputError
from memora.toy.demo import concept_rate, shape_rates
from memora.toy.detector import load_detector
from memora.toy.model import build_model, load_toy_model
from memora.toy.settings import ToySettings

FAST_ESD = ESDConfig(iterations=2, lr=1e-3, ddim_steps=4, batch_size=2, seed=0)


def _snapshot(model):
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def test_parameter_sets():
    unet = build_model().unet
    names = [n for n, _ in unet.named_parameters()]
    x, xkv, u, full = (select_parameters(unet, p) for p in ("x", "xkv", "u", "full"))
    assert x and all("attn2." in n for n in x)
    assert xkv and set(xkv) < set(x) and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in xkv)
    assert u and not any("attn2." in n for n in u) and not any(n.startswith(ESD_U_EXCLUDED) for n in u)
    assert set(x) | set(u) | {n for n in names if n.startswith(ESD_U_EXCLUDED)} == set(names)
    assert full == names
    with pytest.raises(InputError, match="unknown parameter set"):
        select_parameters(unet, "attn")


def test_esd_x_changes_only_cross_attention():
    model = build_model(seed=1)
    before = _snapshot(model)
    result = esd(model, ["a red circle", "a circle"], FAST_ESD)
    changed = changed_tensors(before, model.unet.state_dict())
    assert result.method == "esd-x" and len(result.losses) == 2
    assert changed and set(changed) == set(result.trained)
    assert all("attn2." in k for k in changed)
    assert not model.unet.training and not any(p.requires_grad for p in model.unet.parameters())


def test_esd_u_changes_everything_but_cross_attention():
    model = build_model(seed=1)
    before = _snapshot(model)
    result = esd(model, "a circle", replace(FAST_ESD, params="u", iterations=1, batch_size=1))
    changed = changed_tensors(before, model.unet.state_dict())
    assert not any("attn2." in k for k in changed)
    assert not any(k.startswith(ESD_U_EXCLUDED) for k in changed)
    assert len(changed) == len(result.trained) > 100


def test_esd_keeps_a_half_precision_model_in_its_dtype():
    model = build_model(seed=1, dtype=torch.bfloat16)
    before = _snapshot(model)
    esd(model, "a circle", replace(FAST_ESD, iterations=1, lr=1e-2))
    assert all(p.dtype == torch.bfloat16 for p in model.unet.parameters())
    assert changed_tensors(before, model.unet.state_dict())


def test_esd_rejects_bad_prompts():
    with pytest.raises(InputError, match="prompt"):
        esd(build_model(), ["  "], FAST_ESD)


def test_erased_weights_load_back_onto_the_base_with_the_engine_loader(tmp_path):
    from memora.io import save_safetensors
    from memora.loading import apply_unlearned

    model = build_model(seed=2)
    base = model.clone()
    result = esd(model, "a square", replace(FAST_ESD, lr=1e-2))
    path = save_safetensors(erased_state_dict(model, result), tmp_path / "esd.safetensors")
    apply_unlearned(base, path)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompt(["a square", "a red square"])
    with torch.no_grad():
        assert torch.equal(base.unet(x, 500, encoder_hidden_states=cond).sample,
                           model.unet(x, 500, encoder_hidden_states=cond).sample)


def test_remap_trains_on_anchor_and_retain_pairs():
    model = build_model(seed=3)
    before = _snapshot(model)
    d = ToySettings(remap_pool=8).remap_data("circle")
    assert all("circle" in p or p.startswith("a ") for p in d.anchor_prompts)
    assert not any("circle" in p for p in d.retain_prompts)
    result = remap(model, d, RemapConfig(iterations=2, batch_size=4))
    assert len(changed_tensors(before, model.unet.state_dict())) == len(result.trained) > 200
    with pytest.raises(InputError, match="one prompt per image"):
        RemapData(["a circle"], torch.zeros(2, 3, 16, 16), ["a square"], torch.zeros(1, 3, 16, 16))


# ---------------------------------------------------------------------------------------------- real erasure
@pytest.fixture(scope="module")
def detector():
    return load_detector()


@pytest.fixture(scope="module")
def fast_protocol():
    return ToySettings(eval_concept_samples=24, eval_other_samples=12, eval_steps=20)


def test_shipped_esd_erases_circle_and_spares_the_others(detector, fast_protocol):
    base, erased = load_toy_model("base"), load_toy_model("esd-circle")
    before = concept_rate(base, detector, "circle", fast_protocol)
    after = concept_rate(erased, detector, "circle", fast_protocol)
    assert before >= 0.7 and after <= before - 0.35, (before, after)
    others = shape_rates(erased, detector, ["square", "triangle", "cross"], fast_protocol, n=12)
    assert sum(others.values()) / 3 >= 0.5, others


def test_shipped_remap_erases_circle_completely(detector, fast_protocol):
    erased = load_toy_model("remap-circle")
    assert concept_rate(erased, detector, "circle", fast_protocol) <= 0.1
    others = shape_rates(erased, detector, ["square", "triangle", "cross"], fast_protocol, n=12)
    assert sum(others.values()) / 3 >= 0.6, others


def test_a_short_live_esd_lowers_the_concept_rate(detector, fast_protocol):
    model = load_toy_model("base")
    before = concept_rate(model, detector, "square", fast_protocol)
    settings = ToySettings()
    esd(model, settings.esd_prompts("square"), replace(settings.esd, iterations=60))
    after = concept_rate(model, detector, "square", fast_protocol)
    assert after <= before - 0.3, (before, after)
