"""The toy text-to-image model: the same diffusers / transformers classes as SD 1.x, just small.

- ``UNet2DConditionModel`` (16x16 RGB, pixel space, cross-attention at 8x8 and 4x4; 1.69 M parameters),
- ``CLIPTextModel`` (2 layers, width 64, 16 positions) with a real ``CLIPTokenizer`` whose vocabulary has one token
  per toy word (files in ``weights/tokenizer``),
- no VAE: ``DiffusionModel(vae=None)`` works in pixel space (latents = images * 2 - 1, scale factor 1),
- ``DDIMScheduler`` with the toy's own DDPM noise schedule (linear betas 1e-4..0.02, 1000 steps).

Every engine function (inversion, slerp, regeneration, LoRA, sampling, ESD) runs on it unchanged.

Shipped weights (``memora/toy/weights``, fp16 safetensors, loaded into float32 by default): ``base`` (trained on
all shapes), ``control`` (trained without circles: the never-learned control), and erased models stored as
partial state dicts (only the tensors the eraser changed) that patch ``base``.
Keys are diffusers-prefixed (``unet.…``, ``text_encoder.…``), so ``memora.loading.apply_unlearned`` reads them too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InputError
from ..model import DiffusionModel, Provenance
from .data import VOCABULARY

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TOKENIZER_DIR = WEIGHTS_DIR / "tokenizer"

RESOLUTION = 16
MAX_TOKENS = 16  # tokenizer model_max_length == text encoder max_position_embeddings

UNET_CONFIG: dict = {
    "sample_size": RESOLUTION,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

TEXT_ENCODER_CONFIG: dict = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
}

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

#: shipped model names -> (file, the model it patches or None for a full model)
SHIPPED: dict[str, tuple[str, str | None]] = {
    "base": ("base.safetensors", None),
    "control": ("control.safetensors", None),
    "esd-circle": ("esd-x-circle.safetensors", "base"),
    "remap-circle": ("remap-circle.safetensors", "base"),
}


# ---------------------------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """How CLIP's BPE splits one lower-case ASCII word given ``merges`` (in rank order)."""
    ranks = {m: i for i, m in enumerate(merges)}
    syms = list(word[:-1]) + [word[-1] + "</w>"]
    while len(syms) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(syms, syms[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        syms = syms[:i] + [syms[i] + syms[i + 1]] + syms[i + 2:]
    return syms


def tokenizer_files(words: Sequence[str] = VOCABULARY) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-layout ``vocab`` and ``merges`` where every word in ``words`` becomes one token.

    Layout as OpenAI's CLIP vocabulary: 256 byte symbols, the same with ``</w>``, one token per merge, then
    ``<|startoftext|>`` and ``<|endoftext|>``. Unknown words still tokenize (into byte symbols).
    """
    base = list(_bytes_to_unicode().values())
    vocab, merges = base + [v + "</w>" for v in base], []
    for w in words:
        # add merges until CLIP's BPE (lowest-rank pair first) turns the word into a single token; a new merge
        # has the highest rank, so it never changes how earlier words are split
        while len(syms := _bpe(w, merges)) > 1:
            merges.append((syms[0], syms[1]))
            vocab.append(syms[0] + syms[1])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    seen, ordered = set(), []
    for v in vocab:
        if v not in seen:
            seen.add(v)
            ordered.append(v)
    return {t: i for i, t in enumerate(ordered)}, merges


def write_tokenizer(folder: str | Path, words: Sequence[str] = VOCABULARY) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (readable by transformers 4 and 5 CLIP tokenizers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    return folder


def load_tokenizer(folder: str | Path | None = None):
    """The toy ``CLIPTokenizer`` (``model_max_length`` 16). Built in memory if the shipped files are absent."""
    from transformers import CLIPTokenizer

    folder = Path(folder) if folder is not None else TOKENIZER_DIR
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)
    vocab, merges = tokenizer_files()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


# ---------------------------------------------------------------------------------------------- model
def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_model(seed: int = 0, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                tokenizer=None) -> DiffusionModel:
    """A randomly initialised toy ``DiffusionModel`` (``vae=None``), in eval mode with gradients off."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], **TEXT_ENCODER_CONFIG))
    if torch.device(device) != torch.device("cpu") or dtype != torch.float32:
        unet, text_encoder = unet.to(device=device, dtype=dtype), text_encoder.to(device=device, dtype=dtype)
    unet, text_encoder = (m.eval().requires_grad_(False) for m in (unet, text_encoder))
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, vae=None,
                          scheduler=make_scheduler(), provenance=Provenance(base="toy (built in code)"))


def model_state_dict(model: DiffusionModel, *, text_encoder: bool = True) -> dict[str, torch.Tensor]:
    """``unet.*`` (+ ``text_encoder.*``) tensors of a model, as shipped."""
    sd = {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
    if text_encoder:
        sd.update({f"text_encoder.{k}": v for k, v in model.text_encoder.state_dict().items()
                   if not k.endswith("position_ids")})
    return sd


def apply_state_dict(model: DiffusionModel, sd: dict[str, torch.Tensor], *, partial: bool) -> int:
    """Load ``unet.*`` / ``text_encoder.*`` tensors into ``model`` (cast to its dtype). Returns tensors loaded."""
    loaded = 0
    for prefix, module in (("unet.", model.unet), ("text_encoder.", model.text_encoder)):
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not part:
            continue
        target = module.state_dict()
        unknown = [k for k in part if k not in target]
        if unknown:
            raise InputError(f"toy weights contain {len(unknown)} tensors the toy model lacks (e.g. {unknown[0]!r}); "
                             "were they written for another model? Rebuild them with scripts/train_toy.py")
        missing = [k for k in target if k not in part and not k.endswith("position_ids")]
        if missing and not partial:
            raise InputError(f"toy weights lack {len(missing)} tensors (e.g. {missing[0]!r}); the file is incomplete")
        module.load_state_dict({k: v.to(dtype=target[k].dtype, device=target[k].device) for k, v in part.items()},
                               strict=False)
        loaded += len(part)
    return loaded


def shipped_path(name: str, weights_dir: str | Path | None = None) -> Path:
    if name not in SHIPPED:
        raise InputError(f"unknown toy model {name!r}; shipped models: {', '.join(SHIPPED)}")
    return Path(weights_dir or WEIGHTS_DIR) / SHIPPED[name][0]


def available_models(weights_dir: str | Path | None = None) -> list[str]:
    """Names of shipped toy models whose files exist."""
    return [n for n in SHIPPED if shipped_path(n, weights_dir).exists()]


def load_toy_model(name: str = "base", *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   weights_dir: str | Path | None = None) -> DiffusionModel:
    """A shipped toy model (``"base"``, ``"control"``, ``"esd-circle"``, ``"remap-circle"``), in eval mode."""
    from ..io import read_tensors

    path = shipped_path(name, weights_dir)
    if not path.exists():
        raise InputError(f"toy weights {path} are missing; rebuild them with: python scripts/train_toy.py")
    parent = SHIPPED[name][1]
    if parent:
        model = load_toy_model(parent, device=device, dtype=dtype, weights_dir=weights_dir)
    else:
        model = build_model(device=device, dtype=dtype)
    sd, _ = read_tensors(path)
    apply_state_dict(model, sd, partial=parent is not None)
    model.provenance.base = str(shipped_path(parent or name, weights_dir))
    if parent:
        model.provenance.unlearned = [str(path)]
        model.provenance.method = {"esd": "ESD-x", "remap": "remap"}.get(name.split("-")[0], name)
    return model


def training_facts(name: str, weights_dir: str | Path | None = None) -> dict:
    """The recipe, seeds and wall time stored in a shipped file's metadata by ``scripts/train_toy.py``."""
    from safetensors import safe_open

    path = shipped_path(name, weights_dir) if name in SHIPPED else Path(weights_dir or WEIGHTS_DIR) / name
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("memora_toy", "{}"))
