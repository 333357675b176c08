"""Loading SD 1.x base models and the unlearned weights every released unlearning method ships.

Public functions::

    load_base(source, *, device="cpu", dtype=torch.float32) -> DiffusionModel
    apply_unlearned(model, path, *, allow_partial=True) -> list[LoadReport]      # mutates ``model``
    load_model(base, unlearned=None, *, device="cpu", dtype=torch.float32, method="") -> DiffusionModel
    inspect_weights(path, base=None) -> dict                                      # JSON-able, mutates nothing
    model_to_compvis(model) -> dict[str, Tensor]                                  # (from memora.convert)

**Base models.** A single SD 1.x file (``.safetensors`` or ``.ckpt``, CompVis keys, with or without a
``{"state_dict": ...}`` wrapper, fp16 or fp32): the architecture is read off the tensor shapes
(``memora.convert.detect_compvis_configs``), the components are built empty from those configs and the weights are
assigned through key tables built from the model's own keys. No network, no ``from_single_file``. Or a diffusers
folder (``model_index.json``): UNet, VAE and text encoder built from their ``config.json`` and filled from their
weight files (read with ``memora.io.read_tensors`` only), its tokenizer, and **always** our DDIM scheduler made from
the folder's noise schedule (``memora.sd1.make_scheduler``): a PNDM folder cannot break DDIM inversion.

**Unlearned weights.** Every tensor of the file must land in the model (or be a known non-weight: ``position_ids``,
the LDM noise-schedule buffers, ``model_ema.*``); otherwise ``WeightFormatError`` names the closest key the model
has, or the shape that differs. The file is fully checked before one tensor is written. What the released methods
use (memora-reference.md section 3; the AdvUnlearn checkpoint collection, which MemoRa's code loads):

- ESD, FMN, UCE, SalUn, ScissorHands, EraseDiff, SPM (adapters already merged), AC:
  ``<Method>-<Concept>-Diffusers-UNet.pt``, a full diffusers UNet state dict -> ``unet`` / ``diffusers``.
  (MemoRa's ``BaseUnet`` loads them with a strict ``unet.load_state_dict``.)
- CompVis-format releases (ESD's original ``compvis-*`` checkpoints; UnlearnDiffAtk's ``*-UNET-SD.pt`` are expected
  to be this format, not verified): ``model.diffusion_model.*`` -> ``unet`` / ``compvis`` (+ ``vae``,
  ``text_encoder`` for complete single files).
- AdvUnlearn: ``AdvUnlearn_<Concept>_text_encoder_full.pt`` (``text_encoder.text_model.*``) and ``..._layer0.pt``
  (layer 0 only: partial) -> ``text_encoder`` / ``transformers4``; its HF ``CLIPTextModel`` folders
  (``OPTML-Group/AdvUnlearn``) -> ``text_encoder`` from a model folder.
- MACE: a full diffusers pipeline folder -> ``unet`` + ``text_encoder`` (+ ``vae``); its scheduler is ignored.
- Unmerged SPM / LECO / kohya adapters: ``lora_unet_*`` -> merged into the weights at weight 1 with the file's
  ``alpha / rank`` (SPM's prompt-dependent "facilitated transport" scaling is not reproduced).

Recognised namings (any mix, key by key): diffusers (``down_blocks.*``, bare or ``unet.`` / ``vae.`` prefixed);
CompVis (``model.diffusion_model.*``, ``diffusion_model.*``, bare ``input_blocks.*``, ``first_stage_model.*``);
CLIP text encoder in transformers 4 (``text_model.*``), transformers 5 flattened (``encoder.layers.*``) and LDM
(``cond_stage_model.transformer.text_model.*``) naming, bare or ``text_encoder.`` prefixed, mapped to whatever
naming the *installed* ``CLIPTextModel`` uses. Wrappers ``state_dict`` / ``model`` / ``module`` / ``params`` (up to
four levels), ``{"unet": ..., "text_encoder": ...}`` dicts, and ``module.`` / ``_orig_mod.`` / ``base_model.model.``
prefixes are undone. LoRA-style adapters (kohya ``lora_unet_*``/``lora_te_*`` with ``lora_down``/``lora_up``/
``alpha``, diffusers ``lora.down``/``lora.up``, PEFT ``lora_A``/``lora_B``) are **merged** into the weights
(``W += alpha / r * up @ down``, convolutions included), so the unlearned model is a plain model and a MemoRa LoRA
trains on top of it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from . import sd1
from .convert import COMPVIS_PREFIX, detect_compvis_configs, diffusers_to_compvis, is_adapter_key, model_to_compvis
from .errors import InputError, UnsafeFileError, WeightFormatError
from .io import read_tensors
from .model import DiffusionModel, LoadReport, Provenance

__all__ = ["load_base", "apply_unlearned", "load_model", "inspect_weights", "model_to_compvis", "read_weights",
           "WeightsFile", "UnsafeFileError", "WeightFormatError"]

PathLike = Union[str, os.PathLike]

#: dict keys that only wrap the real state dict (training checkpoints, DataParallel, flax-style params)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "params", "net")
#: wrapper keys that name a component: their contents are kept under this prefix
COMPONENT_KEYS = ("unet", "text_encoder", "vae")
#: non-weight tensors of CompVis/LDM training checkpoints: read, reported, not loaded
LDM_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
               "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
               "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
               "logvar")
LDM_IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.")
SD1_HINT = "wrong base model? SD 2.x/SDXL weights don't fit SD 1.x"

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "adapter_model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin", "adapter_model.bin",
                 "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                 "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin")


# ================================================================================================ reading
@dataclass
class WeightsFile:
    """A weights file or folder read into one flat ``{name: tensor}`` dict (wrappers and prefixes undone)."""

    path: str
    kind: str  # "file", "pipeline_folder", "model_folder", "peft_folder"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    wrappers: list[str] = field(default_factory=list)  # e.g. ["state_dict"]
    dropped: list[str] = field(default_factory=list)  # non-tensor entries (epoch, global_step, optimizer, ...)
    files: list[str] = field(default_factory=list)  # the files read (folders)
    lora_config: dict = field(default_factory=dict)  # adapter_config.json of a PEFT folder
    notes: list[str] = field(default_factory=list)

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(Counter(str(t.dtype).replace("torch.", "") for t in self.tensors.values()))


def read_weights(path: PathLike) -> WeightsFile:
    """Read a weights file (``.safetensors``/``.pt``/``.pth``/``.bin``/``.ckpt``) or a diffusers / transformers /
    PEFT folder into a :class:`WeightsFile`. Only ``memora.io.read_tensors`` touches the bytes (safetensors or
    ``torch.load(weights_only=True)``); a pickle that needs code raises ``UnsafeFileError``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"not found: {path}")
    if path.is_dir():
        return _read_folder(path)
    obj, metadata = read_tensors(path)
    tensors, wrappers, dropped = _unwrap(obj, str(path))
    return WeightsFile(str(path), "file", tensors, metadata, path.stat().st_size, wrappers, dropped, [str(path)])


def _read_folder(folder: Path) -> WeightsFile:
    if (folder / "model_index.json").exists():
        index = json.loads((folder / "model_index.json").read_text())
        if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
            raise WeightFormatError(f"{folder} is an SDXL pipeline ({index.get('_class_name')}): {SD1_HINT}")
        tensors, files, size, notes = {}, [], 0, []
        for component in COMPONENT_KEYS:
            if not (folder / component).is_dir():
                continue
            part, part_files = _read_model_folder(folder / component)
            tensors.update({f"{component}.{k}": v for k, v in part.items()})
            files += part_files
            size += sum(Path(f).stat().st_size for f in part_files)
        if not tensors:
            raise WeightFormatError(f"{folder} has a model_index.json but no unet/, text_encoder/ or vae/ weights")
        skipped = [p.name for p in sorted(folder.iterdir()) if p.is_dir() and p.name not in COMPONENT_KEYS]
        if skipped:
            notes.append(f"not weights for the model, skipped: {', '.join(skipped)}")
        return WeightsFile(str(folder), "pipeline_folder", tensors, {}, size, [], [], files, notes=notes)
    if (folder / "adapter_config.json").exists():
        tensors, files = _read_model_folder(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        return WeightsFile(str(folder), "peft_folder", tensors, {}, sum(Path(f).stat().st_size for f in files),
                           files=files, lora_config=config)
    if (folder / "config.json").exists():
        tensors, files = _read_model_folder(folder)
        return WeightsFile(str(folder), "model_folder", tensors, {}, sum(Path(f).stat().st_size for f in files),
                           files=files)
    raise InputError(f"{folder} is a folder but not a diffusers pipeline (model_index.json), a model folder "
                     "(config.json) or a PEFT adapter (adapter_config.json); pass a weights file or such a folder")


def _read_model_folder(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights of one diffusers/transformers model folder (single file, fp16 variant, or sharded index)."""
    for name in _WEIGHT_FILES:
        for candidate in (folder / (name + ".index.json"), folder / name):
            if not candidate.exists():
                continue
            if candidate.name.endswith(".index.json"):
                weight_map = json.loads(candidate.read_text()).get("weight_map", {})
                files = [folder / f for f in dict.fromkeys(weight_map.values())]
            else:
                files = [candidate]
            tensors: dict[str, torch.Tensor] = {}
            for f in files:
                obj, _ = read_tensors(f)
                part, _, _ = _unwrap(obj, str(f))
                tensors.update(part)
            return tensors, [str(f) for f in files]
    raise WeightFormatError(f"no weights file in {folder} (looked for {', '.join(_WEIGHT_FILES[:5])}, ...)")


def _unwrap(obj: Any, label: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Descend wrapper dicts, flatten nested dicts to dotted names, strip training prefixes.

    Returns ``(tensors, wrappers descended, dropped non-tensor entries)``.
    """
    wrappers: list[str] = []
    dropped: list[str] = []
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if any(torch.is_tensor(v) for v in obj.values()):
            break
        inner = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        dropped += [str(k) for k in obj if k != inner[0]]
        wrappers.append(inner[0])
        obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise WeightFormatError(f"{label} holds a {type(obj).__name__}, not a dict of tensors; expected a state "
                                "dict (name -> tensor)")
    flat: dict[str, torch.Tensor] = {}

    def visit(d: Mapping, prefix: str, depth: int) -> None:
        for k, v in d.items():
            name = f"{prefix}{k}"
            if torch.is_tensor(v):
                flat[name] = v
            elif isinstance(v, Mapping) and depth < 4:
                visit(v, name + ".", depth + 1)
            else:
                dropped.append(name)

    visit(obj, "", 0)
    tensors = {_strip_training_prefixes(k): v for k, v in flat.items()}
    if len(tensors) != len(flat):
        raise WeightFormatError(f"{label}: keys collide after removing 'module.'/'_orig_mod.' prefixes")
    if not tensors:
        raise WeightFormatError(f"{label} contains no tensors (entries: {list(obj)[:8]}); is it a weights file?")
    return tensors, wrappers, dropped


def _strip_training_prefixes(key: str) -> str:
    key = key.replace("_orig_mod.", "")
    while key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    return key


# ============================================================================= other architectures
_OTHER_ARCHITECTURES = [
    ("cond_stage_model.model.", "an SD 2.x checkpoint (OpenCLIP text encoder 'cond_stage_model.model.*')"),
    ("conditioner.embedders.", "an SDXL checkpoint ('conditioner.embedders.*')"),
    ("text_encoder_2.", "SDXL weights (second text encoder 'text_encoder_2.*')"),
    ("lora_te2_", "an SDXL LoRA ('lora_te2_*')"),
    ("model.diffusion_model.label_emb.", "an SDXL checkpoint ('label_emb', size conditioning)"),
    ("label_emb.", "an SDXL UNet ('label_emb', size conditioning)"),
    ("add_embedding.", "an SDXL UNet ('add_embedding', size conditioning)"),
    ("unet.add_embedding.", "an SDXL UNet ('add_embedding', size conditioning)"),
    ("transformer.resblocks.", "an OpenCLIP text encoder (SD 2.x)"),
    ("model.diffusion_model.joint_blocks.", "an SD3 checkpoint"),
    ("model.diffusion_model.double_blocks.", "a Flux checkpoint"),
    ("double_blocks.", "a Flux model"),
    ("joint_blocks.", "an SD3 model"),
]


def _other_architecture(keys: Sequence[str]) -> Optional[str]:
    """A sentence naming the non-SD-1.x architecture the keys belong to, or None."""
    for k in keys:
        for prefix, what in _OTHER_ARCHITECTURES:
            if k.startswith(prefix) or k.startswith("lora_unet_" + prefix.replace(".", "_")):
                return f"{what}, found key {k!r}"
    return None


def _refuse_other_architecture(keys: Sequence[str], label: str) -> None:
    what = _other_architecture(keys)
    if what:
        raise WeightFormatError(f"{label} is {what}: {SD1_HINT}. MemoRa works on SD 1.x models (SD 1.4/1.5 and "
                                "their fine-tunes / unlearned versions).")


# ============================================================================= key index of a model
@dataclass(frozen=True)
class _Target:
    component: str  # "unet", "text_encoder", "vae"
    key: str  # the module's own state-dict key
    naming: str  # "diffusers", "compvis", "transformers4", "transformers5"
    conv1x1: bool = False  # the file stores this linear as a [out, in, 1, 1] conv (CompVis VAE attention)


@dataclass
class _KeyIndex:
    """Every name a tensor of ``model`` can have in a file, built from the model's own keys."""

    names: dict[str, _Target]
    kohya: dict[str, _Target]  # "lora_unet_down_blocks_0_..._to_q" -> the module's weight
    ignored: set[str]  # names that are not weights (position_ids)
    modules: dict[str, torch.nn.Module]
    keys: dict[str, list[str]]  # component -> its keys (plain names, no position_ids)
    actual: dict[str, dict[str, str]]  # component -> plain key -> state-dict key (PEFT .base_layer.)
    shapes: dict[tuple[str, str], torch.Size]


def _key_index(model: DiffusionModel) -> _KeyIndex:
    names: dict[str, _Target] = {}
    kohya: dict[str, _Target] = {}
    ignored: set[str] = set()
    modules, keys, actual, shapes = {}, {}, {}, {}

    def add(name: str, target: _Target) -> None:
        known = names.setdefault(name, target)
        if (known.component, known.key) != (target.component, target.key):  # the namings must not overlap
            raise AssertionError(f"{name!r} would name both {known.component}.{known.key} and "
                                 f"{target.component}.{target.key}")

    for component in ("unet", "text_encoder", "vae"):
        module = getattr(model, component)
        if module is None:
            continue
        modules[component] = module
        state = module.state_dict()
        plain = {k.replace(".base_layer.", "."): k for k in state if not is_adapter_key(k)}
        plain = {k: v for k, v in plain.items() if not k.endswith("position_ids")}
        actual[component] = plain
        keys[component] = list(plain)
        for k, real in plain.items():
            shapes[(component, k)] = state[real].shape
        if component == "text_encoder":
            for k in plain:
                inner = k[len("text_model."):] if k.startswith("text_model.") else k
                for name, naming in ((inner, "transformers5"), ("text_model." + inner, "transformers4"),
                                     ("text_encoder." + inner, "transformers5"),
                                     ("text_encoder.text_model." + inner, "transformers4"),
                                     ("cond_stage_model.transformer.text_model." + inner, "compvis"),
                                     ("cond_stage_model.transformer." + inner, "compvis")):
                    add(name, _Target(component, k, naming))
                if k.endswith(".weight"):
                    for pre in ("lora_te_", "lora_te1_"):
                        for path in ("text_model." + inner, inner):
                            kohya.setdefault(pre + path[:-len(".weight")].replace(".", "_"),
                                             _Target(component, k, "kohya"))
            for pre in ("", "text_model.", "text_encoder.", "text_encoder.text_model.",
                        "cond_stage_model.transformer.", "cond_stage_model.transformer.text_model."):
                ignored.add(pre + "embeddings.position_ids")
            continue
        prefixes = {"unet": ("", "unet."), "vae": ("", "vae.")}[component]
        compvis_prefixes = {"unet": ("", "model.diffusion_model.", "diffusion_model.", "unet."),
                            "vae": ("first_stage_model.", "", "vae.")}[component]
        for k in plain:
            for pre in prefixes:
                add(pre + k, _Target(component, k, "diffusers"))
        try:
            table = diffusers_to_compvis(component, plain, dict(module.config))
        except WeightFormatError:  # not an SD 1.x block layout: diffusers names only
            table = {}
        for k, (name, conv) in table.items():
            for pre in compvis_prefixes:
                add(pre + name, _Target(component, k, "compvis", conv))
        if component == "unet":
            for k in plain:
                if k.endswith(".weight"):
                    for path in (k, table.get(k, ("",))[0]):
                        if path:
                            kohya.setdefault("lora_unet_" + path[:-len(".weight")].replace(".", "_"),
                                             _Target(component, k, "kohya"))
    return _KeyIndex(names, kohya, ignored, modules, keys, actual, shapes)


def _closest(key: str, candidates: Sequence[str]) -> Optional[str]:
    head = key.split(".")[0].split("_")[0]
    pool = [c for c in candidates if c.split(".")[0].split("_")[0] == head] or list(candidates)
    match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
    return match[0] if match else None


def _is_ignorable(key: str, index: _KeyIndex) -> bool:
    return key in index.ignored or key in LDM_BUFFERS or key.startswith(LDM_IGNORED_PREFIXES)


# ================================================================================ matching plain weights
@dataclass
class _Plan:
    """What a plain (non-LoRA) state dict would do to a model. Built without touching the model."""

    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # component -> key -> tensor
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # component -> key -> file key
    namings: dict[str, Counter] = field(default_factory=dict)
    dtypes: dict[str, Counter] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)  # file key, component, file, model
    duplicates: list[tuple[str, str]] = field(default_factory=list)


def _match(index: _KeyIndex, tensors: Mapping[str, torch.Tensor]) -> _Plan:
    plan = _Plan()
    for name, value in tensors.items():
        target = index.names.get(name)
        if target is None:
            if _is_ignorable(name, index):
                plan.ignored.append(name)
            else:
                plan.unknown.append(name)
            continue
        shape = index.shapes[(target.component, target.key)]
        if tuple(value.shape) != tuple(shape):
            if target.conv1x1 and tuple(value.shape) == tuple(shape) + (1, 1):
                value = value.reshape(shape)
            else:
                plan.mismatched.append((name, target.component, tuple(value.shape), tuple(shape)))
                continue
        component_tensors = plan.tensors.setdefault(target.component, {})
        if target.key in component_tensors:
            plan.duplicates.append((plan.sources[target.component][target.key], name))
            continue
        component_tensors[target.key] = value
        plan.sources.setdefault(target.component, {})[target.key] = name
        plan.namings.setdefault(target.component, Counter())[target.naming] += 1
        plan.dtypes.setdefault(target.component, Counter())[str(value.dtype).replace("torch.", "")] += 1
    return plan


def _check_plan(plan: _Plan, index: _KeyIndex, label: str, n_total: int, *, shapes: bool = True) -> None:
    """Raise ``WeightFormatError`` unless every tensor of the file lands in the model with the right shape.

    ``shapes=False`` checks names only (``inspect_weights`` without a base compares with real SD 1.x sizes).
    """
    if plan.unknown:
        matched = sum(len(t) for t in plan.tensors.values())
        candidates = list(index.names)
        lines = []
        for k in plan.unknown[:5]:
            close = _closest(k, candidates)
            lines.append(f"  {k!r}" + (f"  (closest expected key: {close!r})" if close else ""))
        if matched == 0 and not plan.mismatched:
            raise WeightFormatError(
                f"could not recognise the key naming of {label} (none of its {n_total} tensors matches a name the SD "
                "1.x model has):\n" + "\n".join(lines) + "\nExpected diffusers (down_blocks.*), CompVis "
                "(model.diffusion_model.*, input_blocks.*, first_stage_model.*), CLIP text encoder (text_model.*, "
                "encoder.layers.*) or LoRA (lora_unet_*, lora_A/lora_B, lora.down/lora.up) keys.")
        raise WeightFormatError(
            f"{label}: {len(plan.unknown)} of {n_total} tensors do not exist in the SD 1.x model "
            f"(the other {n_total - len(plan.unknown)} have names it knows):\n" + "\n".join(lines) + "\nA misspelt or foreign key; nothing was loaded.")
    if plan.mismatched and shapes:
        k, component, file_shape, model_shape = plan.mismatched[0]
        raise WeightFormatError(
            f"{label}: {len(plan.mismatched)} tensors have shapes that do not fit the {component}, e.g. {k!r} is "
            f"{list(file_shape)} in the file but {list(model_shape)} in the model: {SD1_HINT}. Nothing was loaded.")
    if plan.duplicates:
        a, b = plan.duplicates[0]
        raise WeightFormatError(f"{label}: {len(plan.duplicates)} tensors appear twice under different names, e.g. "
                                f"{a!r} and {b!r}; the file is ambiguous, nothing was loaded")


def _plan_reports(plan: _Plan, index: _KeyIndex, label: str) -> list[LoadReport]:
    reports = []
    for component in ("unet", "text_encoder", "vae"):
        if component not in plan.tensors:
            continue
        covered = plan.tensors[component]
        missing = [k for k in index.keys[component] if k not in covered]
        naming = plan.namings[component].most_common(1)[0][0]
        dtypes = ",".join(sorted(plan.dtypes[component]))
        reports.append(LoadReport(path=label, component=component, naming=naming, matched=len(covered),
                                  total=len(index.keys[component]), missing=missing, dtype=dtypes,
                                  partial=bool(missing)))
    return reports


# ======================================================================================= LoRA adapters
_LORA_DOWN = re.compile(r"^(?P<m>.+?)\.(?:lora_down|lora\.down|lora_linear_layer\.down|lora_A(?:\.[^.]+)?)\.weight$")
_LORA_UP = re.compile(r"^(?P<m>.+?)\.(?:lora_up|lora\.up|lora_linear_layer\.up|lora_B(?:\.[^.]+)?)\.weight$")
_LORA_LEGACY = re.compile(r"^(?P<pre>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<d>down|up)\.weight$")
_LORA_ALPHA = re.compile(r"^(?P<m>.+)\.alpha$")
_UNSUPPORTED_ADAPTERS = ("hada_w", "lokr_w", ".lora_mid.", "dora_scale", ".oft_", "lora_magnitude_vector")


def _is_lora(keys: Sequence[str]) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) or _LORA_DOWN.match(k) or _LORA_UP.match(k)
               or _LORA_LEGACY.match(k) or any(u in k for u in _UNSUPPORTED_ADAPTERS) for k in keys)


@dataclass
class _LoraModule:
    name: str  # the module name in the file
    down: Optional[torch.Tensor] = None
    up: Optional[torch.Tensor] = None
    alpha: Optional[float] = None
    target: Optional[_Target] = None


@dataclass
class _LoraPlan:
    naming: str
    modules: list[_LoraModule]
    unknown: list[str]
    mismatched: list[tuple[str, str, tuple, tuple, tuple]]  # module, component, down, up, weight shapes
    incomplete: list[str]
    not_lora: list[str]
    scale_note: str
    deltas: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]  # component -> key -> (up, down, scale)


def _lora_naming(keys: Sequence[str]) -> str:
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in keys):
        return "kohya"
    if any(".lora_A" in k or ".lora_B" in k for k in keys):
        return "peft"
    return "diffusers_lora"


def _lora_config_alpha(wf: WeightsFile, component: str) -> tuple[Optional[float], dict, bool]:
    """(lora_alpha, alpha_pattern, use_rslora) from a PEFT adapter_config.json or diffusers' safetensors metadata."""
    config: dict = dict(wf.lora_config)
    raw = wf.metadata.get("lora_adapter_metadata")
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = {}
        for k, v in meta.items():
            if k.startswith(component + "."):
                config[k[len(component) + 1:]] = v
            elif "." not in k:
                config.setdefault(k, v)
    alpha = config.get("lora_alpha")
    if alpha is None and "ss_network_alpha" in wf.metadata:
        try:
            alpha = float(wf.metadata["ss_network_alpha"])
        except ValueError:
            alpha = None
    return (float(alpha) if alpha is not None else None), dict(config.get("alpha_pattern") or {}), \
        bool(config.get("use_rslora", False))


def _plan_lora(index: _KeyIndex, wf: WeightsFile) -> _LoraPlan:
    keys = list(wf.tensors)
    bad = [k for k in keys if any(u in k for u in _UNSUPPORTED_ADAPTERS)]
    if bad:
        raise WeightFormatError(f"{wf.path} is a LyCORIS/LoHa/LoKr/DoRA-style adapter (e.g. {bad[0]!r}); only plain "
                                "LoRA (down/up matrices) can be merged. Merge it into the UNet with the tool that "
                                "trained it and load the merged weights.")
    naming = _lora_naming(keys)
    modules: dict[str, _LoraModule] = {}
    not_lora = []
    for k, v in wf.tensors.items():
        m = _LORA_LEGACY.match(k)
        if m:
            name = f"{m['pre']}.{m['proj']}{'.0' if m['proj'] == 'to_out' else ''}"
            setattr(modules.setdefault(name, _LoraModule(name)), m["d"], v)
            continue
        for rx, slot in ((_LORA_DOWN, "down"), (_LORA_UP, "up")):
            m = rx.match(k)
            if m:
                setattr(modules.setdefault(m["m"], _LoraModule(m["m"])), slot, v)
                break
        else:
            m = _LORA_ALPHA.match(k)
            if m and v.numel() == 1:
                modules.setdefault(m["m"], _LoraModule(m["m"])).alpha = float(v.float().item())
            else:
                not_lora.append(k)

    unknown, mismatched, incomplete = [], [], []
    deltas: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    config_alpha: dict[str, tuple[Optional[float], dict, bool]] = {}
    used_config_alpha, no_alpha = False, False
    for mod in modules.values():
        if mod.name.startswith(("lora_unet_", "lora_te_", "lora_te1_")):
            mod.target = index.kohya.get(mod.name)
        else:
            name = _strip_training_prefixes(mod.name)
            target = index.names.get(name + ".weight")
            mod.target = _Target(target.component, target.key, naming) if target else None
        if mod.target is None:
            unknown.append(mod.name)
            continue
        if mod.down is None or mod.up is None:
            incomplete.append(mod.name)
            continue
        weight_shape = tuple(index.shapes[(mod.target.component, mod.target.key)])
        rank = int(mod.down.shape[0])
        fits = (len(weight_shape) >= 2 and mod.up.shape[0] == weight_shape[0] and mod.up.ndim >= 2
                and mod.up.shape[1] == rank and mod.up[0].numel() == rank
                and mod.down[0].numel() == math.prod(weight_shape[1:])
                and (mod.down.ndim == 2 or tuple(mod.down.shape[1:]) == weight_shape[1:]))
        if not fits:
            mismatched.append((mod.name, mod.target.component, tuple(mod.down.shape), tuple(mod.up.shape),
                               weight_shape))
            continue
        component = mod.target.component
        if mod.alpha is not None:
            alpha, rslora = mod.alpha, False
        else:
            if component not in config_alpha:
                config_alpha[component] = _lora_config_alpha(wf, component)
            alpha, pattern, rslora = config_alpha[component]
            for pat, value in pattern.items():
                if re.match(rf"(.*\.)?({pat})$", mod.target.key[:-len(".weight")]):
                    alpha = float(value)
            if alpha is None:
                no_alpha = True
            else:
                used_config_alpha = True
        scale = 1.0 if alpha is None else alpha / (math.sqrt(rank) if rslora else rank)
        deltas.setdefault(component, {})[mod.target.key] = (mod.up, mod.down, scale)
    scales = sorted({round(s, 6) for d in deltas.values() for (_, _, s) in d.values()})
    note = f"scale alpha/rank = {', '.join(f'{s:g}' for s in scales)}" if scales else ""
    if used_config_alpha:
        note += " (alpha from the adapter config / file metadata)"
    if no_alpha:
        note += "; some modules have no alpha anywhere: merged at scale 1 (alpha = rank)"
    return _LoraPlan(naming, list(modules.values()), unknown, mismatched, incomplete, not_lora, note, deltas)


def _lora_module_names(index: _KeyIndex, naming: str) -> list[str]:
    """Module names a LoRA of this naming can target (for "closest expected module" hints)."""
    if naming == "kohya":
        return list(index.kohya)
    return [k[:-len(".weight")] for k in index.names if k.endswith(".weight")]


def _check_lora_plan(plan: _LoraPlan, index: _KeyIndex, label: str, *, shapes: bool = True) -> None:
    if plan.not_lora:
        raise WeightFormatError(f"{label} mixes LoRA tensors with {len(plan.not_lora)} other tensors (e.g. "
                                f"{plan.not_lora[0]!r}); a LoRA file must hold only down/up/alpha tensors")
    if plan.unknown:
        pool = _lora_module_names(index, plan.naming)
        lines = []
        for name in plan.unknown[:5]:
            close = _closest(name, pool)
            lines.append(f"  {name!r}" + (f"  (closest expected module: {close!r})" if close else ""))
        raise WeightFormatError(f"{label}: {len(plan.unknown)} of {len(plan.modules)} LoRA modules target layers the "
                                "SD 1.x model does not have:\n" + "\n".join(lines) + "\nNothing was merged.")
    if plan.incomplete:
        raise WeightFormatError(f"{label}: {len(plan.incomplete)} LoRA modules lack their down or up matrix, e.g. "
                                f"{plan.incomplete[0]!r}; the file is incomplete, nothing was merged")
    if plan.mismatched and shapes:
        name, component, down, up, weight = plan.mismatched[0]
        raise WeightFormatError(f"{label}: {len(plan.mismatched)} LoRA modules do not fit the {component}, e.g. "
                                f"{name!r}: down {list(down)} and up {list(up)} cannot patch a weight of shape "
                                f"{list(weight)}: {SD1_HINT}. Nothing was merged.")


def _lora_delta(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``up @ down`` reshaped to the weight: linear ``[out, r] @ [r, in]``, conv ``[out, r(,1,1)] @ [r, in*kh*kw]``."""
    return (up.flatten(1).float() @ down.flatten(1).float()).reshape(shape)


# ================================================================================== apply unlearned
def apply_unlearned(model: DiffusionModel, path: PathLike, *, allow_partial: bool = True) -> list[LoadReport]:
    """Load unlearned weights from ``path`` into ``model`` (in place); one ``LoadReport`` per component it touches.

    ``path``: any format in the module docstring (a file, a diffusers pipeline folder such as MACE's, a model folder
    such as AdvUnlearn's HF ``CLIPTextModel`` folders, or a PEFT adapter folder). The file is read and checked as
    a whole first: any tensor that fits nowhere raises ``WeightFormatError`` (naming the closest expected key or
    the differing shape) and leaves ``model`` untouched. Files covering part of a component (ESD-x / UCE
    cross-attention only, AdvUnlearn layer 0) patch those tensors and report ``partial=True``; with
    ``allow_partial=False`` they are refused. LoRA-style adapters are merged into the weights. Tensors are cast
    to each component's dtype and device. Reports are appended to ``model.provenance.reports`` and the path to
    ``model.provenance.unlearned``; ``LoadReport.changed`` counts tensors whose values really changed.
    """
    wf = read_weights(path)
    label = wf.path
    _refuse_other_architecture(list(wf.tensors), label)
    index = _key_index(model)
    if _is_lora(list(wf.tensors)):
        reports = _apply_lora(model, index, wf)
    else:
        plan = _match(index, wf.tensors)
        _check_plan(plan, index, label, len(wf.tensors))
        reports = _plan_reports(plan, index, label)
        if not allow_partial:
            partial = [r for r in reports if r.partial]
            if partial:
                r = partial[0]
                raise WeightFormatError(f"{label}: covers {r.matched} of {r.total} tensors of the {r.component} "
                                        f"(e.g. it lacks {r.missing[0]!r}); pass allow_partial=True to patch a subset")
        changed = _write(index, plan.tensors)
        extra = _notes(wf, plan.ignored)
        for r in reports:
            r.changed = changed[r.component]
            r.note = "; ".join(n for n in (_describe_source(wf, r.component), extra) if n)
    if reports and all(r.changed == 0 for r in reports):
        for r in reports:
            r.note = "; ".join(n for n in (r.note, "no tensor changed: the file equals the current weights "
                                                  "(is it the base model itself?)") if n)
    model.provenance.unlearned.append(label)
    model.provenance.reports.extend(reports)
    return reports


def _describe_source(wf: WeightsFile, component: str) -> str:
    if wf.kind == "pipeline_folder":
        return f"from the pipeline folder's {component}/"
    if wf.kind == "model_folder":
        return "from a model folder"
    return ""


def _notes(wf: WeightsFile, ignored: Sequence[str]) -> str:
    notes = list(wf.notes)
    if wf.wrappers:
        notes.append(f"unwrapped {' -> '.join(wf.wrappers)}")
    if ignored:
        notes.append(f"{len(ignored)} non-weight tensors ignored (e.g. {ignored[0]})")
    if wf.dropped:
        notes.append(f"non-tensor entries skipped: {', '.join(wf.dropped[:5])}")
    return "; ".join(notes)


@torch.no_grad()
def _write(index: _KeyIndex, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, int]:
    """Copy checked tensors into the modules (cast to each tensor's dtype/device); count the ones that changed."""
    changed = {}
    for component, values in tensors.items():
        state = index.modules[component].state_dict()
        n = 0
        for key, value in values.items():
            dst = state[index.actual[component][key]]
            new = value.to(device=dst.device, dtype=dst.dtype)
            if not torch.equal(dst, new):
                n += 1
                dst.copy_(new)
        changed[component] = n
    return changed


@torch.no_grad()
def _apply_lora(model: DiffusionModel, index: _KeyIndex, wf: WeightsFile) -> list[LoadReport]:
    plan = _plan_lora(index, wf)
    _check_lora_plan(plan, index, wf.path)
    reports = []
    for component in ("unet", "text_encoder", "vae"):
        deltas = plan.deltas.get(component)
        if not deltas:
            continue
        state = index.modules[component].state_dict()
        dtypes = Counter()
        for key, (up, down, scale) in deltas.items():
            dst = state[index.actual[component][key]]
            delta = _lora_delta(up.to(dst.device), down.to(dst.device), dst.shape) * scale
            dst.copy_((dst.float() + delta).to(dst.dtype))
            dtypes[str(up.dtype).replace("torch.", "")] += 1
        reports.append(LoadReport(
            path=wf.path, component=component, naming=plan.naming, matched=len(deltas),
            total=len(index.keys[component]), dtype=",".join(sorted(dtypes)), partial=False, changed=len(deltas),
            note=f"LoRA merged into {len(deltas)} weights (W += scale * up @ down), {plan.scale_note}; the model is "
                 "now a plain model"))
    return reports


# ==================================================================================== base models
def load_base(source: PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
              ) -> DiffusionModel:
    """An SD 1.x base model from a single-file checkpoint or a diffusers folder, with no network access.

    Single file (``.safetensors`` / ``.ckpt`` / ``.pt``, CompVis keys, optionally ``{"state_dict": ...}``-wrapped,
    fp16 or fp32; the paper's base, SD 1.4, is ``sd-v1-4.ckpt``): sizes are read off the shapes, so SD1-layout
    test checkpoints of any width load too. Diffusers folder (``CompVis/stable-diffusion-v1-4`` as downloaded, or a
    MACE pipeline): the folder's UNet, VAE, text encoder and tokenizer, and a DDIM scheduler with the folder's noise
    schedule whatever scheduler class the folder names. Every tensor must be present and fit; SD 2.x / SDXL files
    are refused with ``WeightFormatError``. Weights are cast to ``dtype`` and moved to ``device``.
    """
    path = Path(source)
    if not path.exists():
        raise InputError(f"base model not found: {path}; give an SD 1.x checkpoint file (.safetensors/.ckpt) or a "
                         "diffusers folder (with model_index.json)")
    device = torch.device(device)
    model = _load_folder(path, device, dtype) if path.is_dir() else _load_single_file(path, device, dtype)
    model.provenance = Provenance(base=str(path))
    return model


def _load_single_file(path: Path, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    wf = read_weights(path)
    keys = list(wf.tensors)
    _refuse_other_architecture(keys, str(path))
    if _is_lora(keys):
        raise WeightFormatError(f"{path} is a LoRA, not a base model; load an SD 1.x checkpoint as base and pass "
                                "the LoRA as unlearned weights")
    if not any(k.startswith(COMPVIS_PREFIX["unet"]) for k in keys):
        raise WeightFormatError(f"{path} is not an SD 1.x single-file checkpoint (no 'model.diffusion_model.*' keys; "
                                f"first keys: {keys[:3]}). If it holds only a UNet or a text encoder, load SD 1.4 "
                                "as the base and pass this file as unlearned weights.")
    configs = detect_compvis_configs(wf.tensors)
    model = _empty_model(configs["unet"], configs["vae"], configs["text_encoder"], sd1.load_tokenizer(),
                         sd1.make_scheduler())
    _fill_empty(model, wf, device, dtype)
    return model


def _load_folder(folder: Path, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    from transformers import CLIPTextConfig

    if not (folder / "model_index.json").exists():
        raise InputError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads((folder / "model_index.json").read_text())
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        raise WeightFormatError(f"{folder} is an SDXL pipeline ({index.get('_class_name')}): {SD1_HINT}")
    configs = {}
    for component in ("unet", "vae", "text_encoder"):
        config_file = folder / component / "config.json"
        if not config_file.exists():
            raise WeightFormatError(f"{folder} has no {component}/config.json; an SD 1.x base folder needs unet/, "
                                    "vae/ and text_encoder/")
        configs[component] = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
    unet = configs["unet"]
    context = unet.get("cross_attention_dim")
    if unet.get("addition_embed_type") or unet.get("use_linear_projection") or context in (1024, 2048):
        kind = "SDXL" if context == 2048 or unet.get("addition_embed_type") else "SD 2.x"
        raise WeightFormatError(f"{folder} holds an {kind} UNet (cross-attention width {context}): {SD1_HINT}")
    if configs["text_encoder"].get("hidden_size") != context:
        raise WeightFormatError(f"{folder}: the text encoder is {configs['text_encoder'].get('hidden_size')} wide but "
                                f"the UNet's cross-attention takes {context}; not an SD 1.x pipeline")
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else None
    tokenizer_dir = folder / "tokenizer"
    tokenizer = sd1.load_tokenizer(tokenizer_dir if tokenizer_dir.is_dir() else None)
    text_config = CLIPTextConfig.from_pretrained(str(folder / "text_encoder"))  # a local folder: no hub access
    model = _empty_model(unet, configs["vae"], text_config, tokenizer, sd1.make_scheduler(scheduler_config))
    _fill_empty(model, read_weights(folder), device, dtype)
    return model


def _empty_model(unet_config: dict, vae_config: dict, text_config, tokenizer, scheduler) -> DiffusionModel:
    """Components with parameters on the meta device (no memory, no random init); buffers are real.

    ``text_config``: a ``CLIPTextConfig`` or the dict of its arguments.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if isinstance(text_config, dict):
        text_config = CLIPTextConfig(**text_config)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(text_config)
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae, scheduler=scheduler)


def _fill_empty(model: DiffusionModel, wf: WeightsFile, device: torch.device, dtype: torch.dtype) -> None:
    """Assign every tensor of a complete base checkpoint to an empty model; refuse anything incomplete.

    Each tensor is copied to ``device``/``dtype`` one by one (no full second copy of the model on the CPU for a
    GPU load). The copy also matters on the CPU: tensors read from a safetensors file sit at unaligned offsets of
    one buffer, which makes CPU kernels take other code paths (outputs differ in the last bits, and run slower).
    """
    index = _key_index(model)
    plan = _match(index, wf.tensors)
    _check_plan(plan, index, wf.path, len(wf.tensors))
    for r in _plan_reports(plan, index, wf.path):
        if r.partial:
            raise WeightFormatError(f"{wf.path}: the {r.component} lacks {len(r.missing)} of {r.total} tensors "
                                    f"(e.g. {r.missing[0]!r}); a base model must be complete. Is the file "
                                    "truncated, or an unlearned/partial file (pass it as unlearned weights)?")
    for component in ("unet", "vae", "text_encoder"):
        if component not in plan.tensors:
            raise WeightFormatError(f"{wf.path} has no {component} weights; a base model needs UNet, VAE and text "
                                    "encoder")
        module = index.modules[component]
        values = {index.actual[component][k]: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype,
                                                      copy=True)
                  for k, v in plan.tensors[component].items()}
        module.load_state_dict(values, strict=True, assign=True)
        del values
        module.to(device)  # the buffers built with the module (position_ids); no dtype argument: diffusers warns
        leftover = [n for n, p in module.named_parameters() if p.is_meta]
        if leftover:
            raise WeightFormatError(f"{wf.path}: {component} parameters {leftover[:3]} were not in the file")
        module.eval().requires_grad_(False)


# ============================================================================== convenience / inspect
def load_model(base: Union[PathLike, DiffusionModel], unlearned: Union[None, PathLike, Sequence[PathLike]] = None, *,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, method: str = "",
               allow_partial: bool = True) -> DiffusionModel:
    """``load_base(base)`` (or a clone of a given ``DiffusionModel``) + ``apply_unlearned`` for each file in order.

    Sets ``provenance.base`` and ``provenance.method`` (e.g. ``"ESD"``; recorded in LoRA metadata).
    """
    if isinstance(base, DiffusionModel):
        model = base.clone().to(device=device, dtype=dtype)
    else:
        model = load_base(base, device=device, dtype=dtype)
    if unlearned is None:
        paths: list[PathLike] = []
    elif isinstance(unlearned, (str, os.PathLike)):
        paths = [unlearned]
    else:
        paths = list(unlearned)
    for p in paths:
        apply_unlearned(model, p, allow_partial=allow_partial)
    model.provenance.method = method
    return model


def inspect_weights(path: PathLike, base: Union[None, PathLike, DiffusionModel] = None) -> dict:
    """What a weights file (or folder) is, and, given ``base``, how it fits that model. JSON-able; mutates nothing.

    Keys: ``file``, ``kind``, ``size_bytes``, ``n_tensors``, ``dtypes``, ``wrappers``, ``format`` (``"weights"`` or
    ``"lora"``), ``components`` (``[{component, naming, n_tensors}]`` detected against SD 1.x key names),
    ``unrecognised`` (``[{key, closest}]``), ``ignored``, ``architecture`` (a note when the keys belong to SD 2.x /
    SDXL / ...), ``lora`` (ranks, alphas, modules) for adapters, ``problems`` (what ``apply_unlearned`` would
    refuse), ``fits``. With ``base`` (a ``DiffusionModel`` or a path for ``load_base``): ``base`` and ``reports``
    (``LoadReport.to_dict()`` per component: matched / total / missing / partial) and shape checks against it;
    without, shapes are checked against real SD 1.x sizes (``fits_sd1_sizes``).
    """
    wf = read_weights(path)
    keys = list(wf.tensors)
    info: dict[str, Any] = {
        "file": wf.path, "kind": wf.kind, "size_bytes": wf.size_bytes, "n_tensors": len(keys), "dtypes": wf.dtypes,
        "wrappers": wf.wrappers, "dropped": wf.dropped[:20], "files": wf.files[:20],
        "metadata": {k: (v if len(v) <= 300 else v[:300] + "...") for k, v in wf.metadata.items()},
        "architecture": _other_architecture(keys), "problems": [],
    }
    if isinstance(base, DiffusionModel):
        reference, info["base"] = base, base.provenance.base or "(model in memory)"
    elif base is not None:
        reference, info["base"] = load_base(base), str(base)
    else:
        reference, info["base"] = DiffusionModel(**sd1.build_components("sd1", meta=True)), None
    index = _key_index(reference)
    problems: list[str] = info["problems"]
    if info["architecture"]:
        problems.append(f"not SD 1.x: {info['architecture']}")
    if _is_lora(keys):
        info["format"] = "lora"
        try:
            lora = _plan_lora(index, wf)
        except WeightFormatError as e:
            problems.append(str(e))
            lora = None
        if lora is not None:
            counts = Counter(m.target.component for m in lora.modules if m.target)
            info["components"] = [{"component": c, "naming": lora.naming, "n_tensors": n} for c, n in counts.items()]
            info["lora"] = {
                "naming": lora.naming, "modules": len(lora.modules),
                "ranks": sorted({int(m.down.shape[0]) for m in lora.modules if m.down is not None}),
                "alphas": sorted({m.alpha for m in lora.modules if m.alpha is not None}), "scale": lora.scale_note,
            }
            pool = _lora_module_names(index, lora.naming)
            info["unrecognised"] = [{"key": k, "closest": _closest(k, pool)} for k in lora.unknown[:20]]
            try:  # without a base, sizes were checked against real SD 1.x: a hint, not a refusal
                _check_lora_plan(lora, index, wf.path, shapes=base is not None)
            except WeightFormatError as e:
                problems.append(str(e))
            if base is not None and not problems:
                info["reports"] = [LoadReport(path=wf.path, component=c, naming=lora.naming, matched=len(d),
                                              total=len(index.keys[c])).to_dict() for c, d in lora.deltas.items()]
    else:
        info["format"] = "weights"
        plan = _match(index, wf.tensors)
        info["components"] = [{"component": c, "naming": plan.namings[c].most_common(1)[0][0],
                               "namings": dict(plan.namings[c]), "n_tensors": len(plan.tensors[c])}
                              for c in plan.tensors]
        for name, component, file_shape, model_shape in plan.mismatched:  # still report what the names say
            entry = next((e for e in info["components"] if e["component"] == component), None)
            if entry is None:
                entry = {"component": component, "naming": index.names[name].naming, "n_tensors": 0}
                info["components"].append(entry)
            entry["n_tensors"] += 1
        info["unrecognised"] = [{"key": k, "closest": _closest(k, list(index.names))} for k in plan.unknown[:20]]
        info["n_unrecognised"] = len(plan.unknown)
        info["ignored"] = plan.ignored[:20]
        mismatches = [{"key": k, "component": c, "file": list(f), "model": list(m)} for k, c, f, m in plan.mismatched]
        try:  # without a base, sizes were checked against real SD 1.x: a hint, not a refusal
            _check_plan(plan, index, wf.path, len(keys), shapes=base is not None)
        except WeightFormatError as e:
            problems.append(str(e))
        if base is not None:
            info["shape_mismatches"] = mismatches[:20]
            info["reports"] = [r.to_dict() for r in _plan_reports(plan, index, wf.path)]
        else:  # names were matched against SD 1.x; sizes differ for SD1-layout test models, SD 2.x, ...
            info["fits_sd1_sizes"] = not plan.mismatched
            info["sd1_size_mismatches"] = len(mismatches)
            info["sd1_size_mismatch_example"] = mismatches[0] if mismatches else None
    info["fits"] = not info["problems"]
    return info
