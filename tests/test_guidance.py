"""AutoMemoRa and Multi-MemoRa (memora.guidance) on the tiny model with random LoRA files."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import make_tiny_model, write_random_lora

from memora.errors import InputError
from memora.guidance import apply_multi_memora, automemora_eps, generate_automemora
from memora.lora import active_lora_weights, load_lora
from memora.sampling import cfg_eps, generate

PROMPTS = ["a photo of the parachute", "a photo of the church"]
STEPS = 3


@functools.lru_cache(maxsize=1)
def _base_model():
    return make_tiny_model(0)


def fresh_model():
    """A copy of the tiny model (cheaper than building one); the cached original is never used directly."""
    return _base_model().clone()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    plain = fresh_model()
    lora_a = write_random_lora(plain, folder / "concept_a.safetensors", seed=1)
    lora_b = write_random_lora(plain, folder / "concept_b.safetensors", seed=2, rank=3, alpha=1.5)
    with_lora = fresh_model()
    load_lora(with_lora, lora_a, adapter_name="memora")
    return {"plain": plain, "with_lora": with_lora, "lora_a": lora_a, "lora_b": lora_b}


def sample(model, **kwargs):
    return generate(model, PROMPTS[:1], seeds=11, steps=STEPS, scheduler="lms", guidance=7.5, **kwargs)


def test_automemora_limits_and_mixture(setup):
    plain, with_lora = setup["plain"], setup["with_lora"]
    reference_lora = sample(with_lora)
    reference_plain = sample(plain)
    assert (reference_lora - reference_plain).abs().max() > 1e-2

    w1, w0, w2 = (generate_automemora(with_lora, PROMPTS[:1], seeds=11, w=w, steps=STEPS, guidance=7.5)
                  for w in (1.0, 0.0, 2.0))
    assert (w1 - reference_lora).abs().max() <= 1e-6
    assert (w0 - reference_plain).abs().max() <= 1e-6
    assert (w2 - reference_lora).abs().max() > 1e-3 and (w2 - reference_plain).abs().max() > 1e-3
    assert active_lora_weights(with_lora) == {"memora": pytest.approx(1.0)}  # adapters back on


@torch.no_grad()
def test_automemora_formula_on_one_step(setup):
    plain, with_lora = setup["plain"], setup["with_lora"]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor(601)
    cond = with_lora.encode_prompt(PROMPTS)
    uncond = with_lora.encode_prompt(["", ""])
    guidance = torch.tensor([7.5, 3.0]).view(-1, 1, 1, 1)

    # each model's own CFG prediction; "bad" from a separate model without any adapter
    eps_main = cfg_eps(with_lora, x, t, cond, uncond, guidance)
    eps_bad = cfg_eps(plain, x, t, cond, uncond, guidance)
    assert (eps_main - eps_bad).abs().max() > 1e-2
    for w in (2.0, 0.5):
        got = automemora_eps(with_lora, w=w)(x, t, cond, uncond, guidance)
        assert (got - (eps_bad + w * (eps_main - eps_bad))).abs().max() <= 1e-5
    swapped = automemora_eps(with_lora, w=2.0, main="unlearned")(x, t, cond, uncond, guidance)
    assert (swapped - (eps_main + 2.0 * (eps_bad - eps_main))).abs().max() <= 1e-5


def test_adapters_reenabled_after_error(setup):
    with_lora = setup["with_lora"]
    eps_fn = automemora_eps(with_lora, w=2.0, main="unlearned")  # the first UNet call runs with adapters off
    x = torch.randn(1, 4, 8, 8)
    bad_cond = torch.randn(1, 77, 5)  # wrong width: the UNet raises inside the disabled block
    with pytest.raises(RuntimeError):
        eps_fn(x, torch.tensor(500), bad_cond, bad_cond, torch.ones(1, 1, 1, 1))
    assert active_lora_weights(with_lora) == {"memora": pytest.approx(1.0)}
    cond = with_lora.encode_prompt(PROMPTS[:1])
    with torch.no_grad():
        on = cfg_eps(with_lora, x, torch.tensor(500), cond, cond, torch.ones(1, 1, 1, 1))
        off = cfg_eps(setup["plain"], x, torch.tensor(500), cond, cond, torch.ones(1, 1, 1, 1))
    assert (on - off).abs().max() > 1e-3  # the LoRA acts again


def test_automemora_needs_an_active_lora(setup):
    with pytest.raises(InputError, match="no LoRA adapter"):
        automemora_eps(setup["plain"], w=2.0)
    with pytest.raises(InputError, match="no LoRA adapter named 'other'"):
        automemora_eps(setup["with_lora"], lora_adapter="other")


def test_multi_memora_weights(setup):
    first_alone = fresh_model()
    load_lora(first_alone, setup["lora_a"])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor(400)
    emb = first_alone.encode_prompt(PROMPTS)

    @torch.no_grad()
    def out(model):
        return model.unet(x, t, encoder_hidden_states=emb).sample

    multi = fresh_model()
    names = apply_multi_memora(multi, [(setup["lora_a"], 1.0), (setup["lora_b"], 0.0)])
    assert names == ["concept_a", "concept_b"]
    assert active_lora_weights(multi) == {"concept_a": pytest.approx(1.0), "concept_b": pytest.approx(0.0)}
    assert (out(multi) - out(first_alone)).abs().max() <= 1e-6

    half = fresh_model()
    apply_multi_memora(half, [(setup["lora_a"], 0.5), (setup["lora_b"], 0.5)])
    assert (out(half) - out(first_alone)).abs().max() > 1e-3
    assert [e["weight"] for e in half.provenance.loras] == [0.5, 0.5]

    # one linear layer: W_eff = W + sum_i w_i * (alpha_i / r_i) * B_i A_i
    from safetensors.torch import load_file

    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    key = "lora_unet_" + name.replace(".", "_")
    layer = dict(half.unet.named_modules())[name]
    base_weight = layer.base_layer.weight
    w_eff = base_weight.clone()
    for path, w in ((setup["lora_a"], 0.5), (setup["lora_b"], 0.5)):
        f = load_file(str(path))
        down, up, alpha = f[f"{key}.lora_down.weight"], f[f"{key}.lora_up.weight"], f[f"{key}.alpha"]
        w_eff += w * (alpha / down.shape[0]) * up @ down
    h = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (layer(h) - h @ w_eff.T).abs().max() <= 1e-5
        assert (layer(h) - h @ base_weight.T).abs().max() > 1e-3
