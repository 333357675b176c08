"""Key names of SD 1.x components in the two layouts: diffusers and CompVis (LDM, the "single file").

diffusers names a UNet tensor ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``; the
original CompVis repository (and every single-file ``.ckpt`` / ``.safetensors`` of SD 1.x, A1111, ComfyUI) names
the same tensor ``model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``.

The tables here are built **from the model's own keys** (``diffusers_to_compvis(component, keys, config)``), so they
cover exactly the tensors the model has and work on partial state dicts (a file holding only the cross-attention
K/V projections maps key by key; diffusers' own ``convert_ldm_unet_checkpoint`` silently drops keys on partial
dicts). The prefix arithmetic follows the block structure in the config (levels, ``layers_per_block``, which
levels have attention), so the tiny SD1-layout test model and the toy model map like SD 1.x does.

Also here: reading the architecture (channels, cross-attention width, text-encoder size) off the tensor shapes of
a CompVis checkpoint (``detect_compvis_configs``), and ``model_to_compvis`` (a ``DiffusionModel`` -> one SD 1.x
single-file state dict that diffusers' ``from_single_file``, ComfyUI and A1111 read).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import torch

from .errors import WeightFormatError

#: where each component lives in a CompVis single-file checkpoint
COMPVIS_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}

_UNET_TOP = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
]
_UNET_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]
_VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                  ("to_out.0.", "proj_out.")]


# ------------------------------------------------------------------------------------------ config helpers
def _layers_per_block(config: Mapping[str, Any]) -> int:
    layers = config.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise WeightFormatError(f"per-level layers_per_block {list(layers)} is not an SD 1.x layout")
        layers = layers[0]
    return int(layers)


def _unet_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, CompVis prefix) pairs of every UNet block, from the block structure in ``config``.

    With ``L = layers_per_block`` and ``n`` levels: down level ``i`` resnet ``j`` is ``input_blocks[1 + i(L+1) + j]``
    (``.0`` resnet, ``.1`` attention), its downsampler ``input_blocks[(i+1)(L+1)].0.op``; up level ``i`` resnet ``j``
    (``L+1`` of them) is ``output_blocks[i(L+1) + j]``, its upsampler the last block's ``.1`` (``.2`` after an
    attention); the mid block is ``middle_block.0/1/2``. For SD 1.x (L=2, n=4) this is the familiar 12 + 12 table.
    """
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    n = len(down_types)
    per = _layers_per_block(config) + 1
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        down_attn = down_types[i].startswith("CrossAttn")
        up_attn = up_types[i].startswith("CrossAttn")
        for j in range(per - 1):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * per + j}.0."))
            if down_attn:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * per + j}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per}.0.op."))
        for j in range(per):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * per + j}.0."))
            if up_attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * per + j}.1."))
        if i < n - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * per + per - 1}.{2 if up_attn else 1}."))
    pairs += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def unet_key_to_compvis(key: str, prefix_map: list[tuple[str, str]]) -> str:
    """One diffusers UNet key -> its CompVis name (without ``model.diffusion_model.``)."""
    for a, b in _UNET_TOP:
        if key.startswith(a):
            return b + key[len(a):]
    for a, b in prefix_map:
        if key.startswith(a):
            rest = key[len(a):]
            if ".resnets." in a:
                for ra, rb in _UNET_RESNET:
                    if rest.startswith(ra):
                        rest = rb + rest[len(ra):]
                        break
            return b + rest
    raise KeyError(key)


def vae_key_to_compvis(key: str, n_levels: int) -> tuple[str, bool]:
    """One diffusers VAE key -> (CompVis name without ``first_stage_model.``, is a linear stored as a 1x1 conv)."""
    parts = key.split(".")
    side = parts[0]  # "encoder", "decoder", "quant_conv", "post_quant_conv"
    if side not in ("encoder", "decoder"):
        return key, False
    rest = ".".join(parts[1:])
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)$", rest)
    if m:
        kind, i, sub, j, tail = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        level = i if kind == "down" else n_levels - 1 - i
        if sub == "resnets":
            tail = tail.replace("conv_shortcut.", "nin_shortcut.")
            return f"{side}.{kind}.{level}.block.{j}.{tail}", False
        return f"{side}.{kind}.{level}.{'downsample' if kind == 'down' else 'upsample'}.{tail}", False
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)$", rest)
    if m:
        return f"{side}.mid.block_{int(m.group(1)) + 1}.{m.group(2).replace('conv_shortcut.', 'nin_shortcut.')}", False
    if rest.startswith("mid_block.attentions.0."):
        tail = rest[len("mid_block.attentions.0."):]
        for a, b in _VAE_ATTENTION:
            if tail.startswith(a):
                tail = b + tail[len(a):]
                break
        conv = tail.endswith("weight") and not tail.startswith("norm.")
        return f"{side}.mid.attn_1.{tail}", conv
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}", False
    return key, False


def text_key_to_compvis(key: str) -> str:
    """A ``CLIPTextModel`` key (transformers 4 ``text_model.*`` or 5 flattened) -> CompVis name (no prefix)."""
    return key if key.startswith("text_model.") else "text_model." + key


def diffusers_to_compvis(component: str, keys: Iterable[str], config: Mapping[str, Any] | None = None
                         ) -> dict[str, tuple[str, bool]]:
    """``{diffusers key: (CompVis key without the component prefix, linear-as-1x1-conv flag)}`` for ``keys``.

    ``component`` is ``"unet"`` (needs the UNet ``config``), ``"vae"`` (needs the VAE ``config``) or
    ``"text_encoder"``. Raises ``WeightFormatError`` for a key outside the SD 1.x block structure.
    """
    table: dict[str, tuple[str, bool]] = {}
    if component == "unet":
        prefix_map = _unet_prefix_map(config or {})
        for k in keys:
            try:
                table[k] = (unet_key_to_compvis(k, prefix_map), False)
            except KeyError:
                raise WeightFormatError(f"UNet key {k!r} has no CompVis name: not an SD 1.x-layout UNet") from None
    elif component == "vae":
        n_levels = len((config or {}).get("block_out_channels", [0, 0, 0, 0]))
        for k in keys:
            table[k] = vae_key_to_compvis(k, n_levels)
    elif component == "text_encoder":
        for k in keys:
            table[k] = (text_key_to_compvis(k), False)
    else:
        raise ValueError(f"unknown component {component!r}")
    return table


# --------------------------------------------------------------------------------- model -> single file
def model_to_compvis(model, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """An SD 1.x single-file (CompVis) state dict of ``model``'s UNet, VAE and text encoder.

    Keys: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE; its mid-block attention linears
    become ``[C, C, 1, 1]`` convs as in the original VAE), ``cond_stage_model.transformer.text_model.*`` (text
    encoder; ``text_model.`` inserted for transformers 5's flattened names) plus the ``position_ids`` buffer
    (``[1, 77]`` int64) real SD 1.x checkpoints carry. Tensors are detached, contiguous, on the model's device,
    cast to ``dtype`` if given (integer buffers are kept). PEFT adapters on the UNet are **not** included (the
    base weights under them are exported; save adapters with ``memora.lora.save_lora``).

    Used by the ComfyUI bridge node (``comfy.sd.load_state_dict_guess_config``) and by tests to write
    checkpoints; ``diffusers.StableDiffusionPipeline.from_single_file(path, config=write_config_folder(...))``
    reads the result exactly.
    """
    from .errors import InputError

    if model.vae is None:
        raise InputError("this model has no VAE (a pixel-space model such as the toy); an SD 1.x single-file "
                         "checkpoint needs one")
    out: dict[str, torch.Tensor] = {}
    for component, module in (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoder)):
        sd = base_state_dict(module)
        config = dict(module.config) if component != "text_encoder" else None
        table = diffusers_to_compvis(component, sd.keys(), config)
        for key, tensor in sd.items():
            name, conv = table[key]
            tensor = tensor.detach()
            if conv and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            out[COMPVIS_PREFIX[component] + name] = tensor.contiguous()
    n_pos = int(model.text_encoder.config.max_position_embeddings)
    out[COMPVIS_PREFIX["text_encoder"] + "text_model.embeddings.position_ids"] = torch.arange(
        n_pos, dtype=torch.int64, device=model.device)[None]
    return out


def base_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` under its plain names: PEFT's ``.base_layer`` removed, adapter tensors left out."""
    out = {}
    for key, tensor in module.state_dict().items():
        if is_adapter_key(key):
            continue
        out[key.replace(".base_layer.", ".")] = tensor
    return out


def is_adapter_key(key: str) -> bool:
    """True for a PEFT adapter tensor inside a wrapped module (``lora_A``, ``lora_B``, magnitude vectors, ...)."""
    return any(part.startswith(("lora_", "hada_", "lokr_", "oft_")) for part in key.split("."))


# ------------------------------------------------------------------------ architecture from CompVis shapes
def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def detect_compvis_configs(sd: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """diffusers configs ``{"unet", "vae", "text_encoder"}`` read off the shapes of a CompVis SD 1.x checkpoint.

    ``sd`` has the single-file prefixes (``model.diffusion_model.`` etc.). Read from shapes: the UNet's block
    channels (``input_blocks.{1+i(L+1)}.0.out_layers.3.weight``), levels and ``layers_per_block`` (positions of the
    downsampling ``op`` convs), which levels have attention, in/out channels and the cross-attention width
    (``attn2.to_k.weight``); the VAE's channels, levels and latent channels; the text encoder's vocabulary,
    positions, width, depth and MLP width. What shapes cannot tell (attention head counts, ``sample_size``) comes
    from ``memora.sd1``'s ``"tiny"`` config when the channels are the tiny model's, else from SD 1.x's.

    Raises ``WeightFormatError`` for SD 2.x (linear ``proj_in``, 1024-wide context) and SDXL (2048-wide context),
    inpainting UNets, and checkpoints that lack a component.
    """
    from . import sd1

    u = COMPVIS_PREFIX["unet"]
    if u + "input_blocks.0.0.weight" not in sd:
        raise WeightFormatError("this checkpoint has no SD 1.x UNet (no 'model.diffusion_model.input_blocks.0.0."
                                "weight'); a base model must be a complete SD 1.x checkpoint")
    conv_in = sd[u + "input_blocks.0.0.weight"]
    downs = _count(sd, re.escape(u) + r"input_blocks\.(\d+)\.0\.op\.weight")
    if not downs:
        raise WeightFormatError("this UNet has no downsampling blocks; not an SD 1.x layout")
    per = downs[0]
    n_levels = len(downs) + 1
    if downs != [(i + 1) * per for i in range(n_levels - 1)]:
        raise WeightFormatError(f"unexpected UNet block structure (downsamplers at input_blocks {downs}); "
                                "not an SD 1.x layout")
    channels, attn = [], []
    for i in range(n_levels):
        key = u + f"input_blocks.{1 + i * per}.0.out_layers.3.weight"
        if key not in sd:
            raise WeightFormatError(f"the UNet lacks {key!r}; the checkpoint is incomplete or not SD 1.x")
        channels.append(int(sd[key].shape[0]))
        attn.append(u + f"input_blocks.{1 + i * per}.1.proj_in.weight" in sd)
    if not any(attn):
        raise WeightFormatError("this UNet has no cross-attention; not a text-to-image SD 1.x model")
    first = attn.index(True)
    proj_in = sd[u + f"input_blocks.{1 + first * per}.1.proj_in.weight"]
    to_k = sd.get(u + f"input_blocks.{1 + first * per}.1.transformer_blocks.0.attn2.to_k.weight")
    context = int(to_k.shape[1]) if to_k is not None else -1
    if proj_in.ndim == 2 or context in (1024, 2048):
        kind = "SDXL" if context == 2048 else "SD 2.x"
        raise WeightFormatError(f"this is an {kind} checkpoint (cross-attention width {context}, "
                                f"{'linear' if proj_in.ndim == 2 else 'conv'} proj_in): wrong base model? SD 2.x/SDXL "
                                "weights don't fit SD 1.x. MemoRa needs an SD 1.x base (SD 1.4/1.5 or a fine-tune).")
    in_channels, out_channels = int(conv_in.shape[1]), int(sd[u + "out.2.weight"].shape[0])
    if in_channels != out_channels:
        raise WeightFormatError(f"this UNet takes {in_channels} input channels and predicts {out_channels} "
                                "(an inpainting or image-conditioned model); MemoRa needs a text-to-image SD 1.x UNet")

    tiny = sd1.unet_config("tiny")
    unet = dict(tiny if channels == tiny["block_out_channels"] else sd1.unet_config("sd1"))
    unet.update(
        in_channels=in_channels, out_channels=out_channels, block_out_channels=channels, layers_per_block=per - 1,
        cross_attention_dim=context,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
    )

    v = COMPVIS_PREFIX["vae"]
    if v + "encoder.conv_in.weight" not in sd:
        raise WeightFormatError("this checkpoint has no VAE ('first_stage_model.*'); a base model must be a "
                                "complete SD 1.x checkpoint (UNet, VAE and text encoder)")
    v_levels = _count(sd, re.escape(v) + r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight")
    v_layers = _count(sd, re.escape(v) + r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight")
    v_channels = [int(sd[v + f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in v_levels]
    tiny_vae = sd1.vae_config("tiny")
    vae = dict(tiny_vae if v_channels == tiny_vae["block_out_channels"] else sd1.vae_config("sd1"))
    vae.update(
        block_out_channels=v_channels, layers_per_block=len(v_layers),
        latent_channels=int(sd[v + "post_quant_conv.weight"].shape[0]),
        in_channels=int(sd[v + "encoder.conv_in.weight"].shape[1]),
        out_channels=int(sd[v + "decoder.conv_out.weight"].shape[0]),
        down_block_types=["DownEncoderBlock2D"] * len(v_levels), up_block_types=["UpDecoderBlock2D"] * len(v_levels),
    )
    if vae["latent_channels"] != in_channels:
        raise WeightFormatError(f"the VAE has {vae['latent_channels']} latent channels but the UNet takes "
                                f"{in_channels}; the checkpoint mixes models")

    t = COMPVIS_PREFIX["text_encoder"]
    t = t + "text_model." if t + "text_model.embeddings.token_embedding.weight" in sd else t
    if t + "embeddings.token_embedding.weight" not in sd:
        raise WeightFormatError("this checkpoint has no CLIP text encoder ('cond_stage_model.transformer."
                                "text_model.*'); a base model must be a complete SD 1.x checkpoint")
    vocab, hidden = (int(s) for s in sd[t + "embeddings.token_embedding.weight"].shape)
    layers = _count(sd, re.escape(t) + r"encoder\.layers\.(\d+)\.mlp\.fc1\.weight")
    tiny_te = sd1.text_encoder_config("tiny")
    te = dict(tiny_te if hidden == tiny_te["hidden_size"] else sd1.text_encoder_config("sd1"))
    if hidden != te["hidden_size"]:
        te["num_attention_heads"] = max(1, hidden // 64)
    te.update(
        vocab_size=vocab, hidden_size=hidden, projection_dim=hidden, num_hidden_layers=len(layers),
        max_position_embeddings=int(sd[t + "embeddings.position_embedding.weight"].shape[0]),
        intermediate_size=int(sd[t + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
    )
    if hidden != context:
        raise WeightFormatError(f"the text encoder is {hidden} wide but the UNet's cross-attention takes {context}; "
                                "the checkpoint mixes models")
    return {"unet": unet, "vae": vae, "text_encoder": te}
