"""Plumbing shared by the nodes: devices and memory, model folders, progress and interruption."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

import torch

import folder_paths

UNLEARNED_FOLDER = "unlearned"  # models/unlearned: unlearned weights of any released format
DETECTOR_FOLDER = "concept_detectors"  # models/concept_detectors: NudeNet .onnx, ResNet-50, style classifier folders
DETECTOR_SUFFIXES = {".onnx", ".safetensors", ".pth", ".pt", ".bin"}
NONE = "[none]"
DTYPES = ["auto", "fp16", "bf16", "fp32"]


def register_model_folders() -> None:
    """Register ``models/unlearned`` (weights files and diffusers pipeline folders such as MACE's) and
    ``models/concept_detectors`` (detector files and Hugging Face classifier folders)."""
    for key, suffixes in ((UNLEARNED_FOLDER, set(folder_paths.supported_pt_extensions)),
                          (DETECTOR_FOLDER, DETECTOR_SUFFIXES)):
        path = os.path.join(folder_paths.models_dir, key)
        if key not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[key] = ([path], set(suffixes))
        else:
            folder_paths.add_model_folder_path(key, path)


def detector_file_options() -> list[str]:
    """``[default]`` + files and Hugging Face folders (holding a config.json) under ``models/concept_detectors``."""
    options = ["[default]"]
    if DETECTOR_FOLDER not in folder_paths.folder_names_and_paths:
        return options
    options += folder_paths.get_filename_list(DETECTOR_FOLDER)
    for root in folder_paths.get_folder_paths(DETECTOR_FOLDER):
        if os.path.isdir(root):
            options += sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "config.json")))
    return options


def resolve_detector_file(option: str) -> Optional[str]:
    """A ``detector_file_options`` choice -> a path (None for ``[default]``)."""
    if option in ("", "[default]"):
        return None
    path = folder_paths.get_full_path(DETECTOR_FOLDER, option)
    if path is None:
        for root in folder_paths.get_folder_paths(DETECTOR_FOLDER):
            if os.path.isdir(os.path.join(root, option)):
                return os.path.join(root, option)
        raise FileNotFoundError(f"{option} not found in models/{DETECTOR_FOLDER}; refresh the node list (R)")
    return path


def prompt_csv_options() -> list[str]:
    """The shipped prompt sets, then ``*.csv`` files in ComfyUI's input folder (as ``input/<name>``)."""
    from ..memora.evaluate import shipped_prompt_sets

    options = list(shipped_prompt_sets())
    root = folder_paths.get_input_directory()
    if os.path.isdir(root):
        options += [f"input/{f}" for f in sorted(os.listdir(root)) if f.lower().endswith(".csv")]
    return options


def resolve_prompt_csv_option(option: str) -> str:
    if option.startswith("input/"):
        path = os.path.join(folder_paths.get_input_directory(), option[len("input/"):])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found; put the CSV in ComfyUI's input folder and refresh (R)")
        return path
    return option  # a shipped set name, resolved by the engine


def output_run_dir(name: str) -> Path:
    """A run folder under ComfyUI's output directory (relative names only)."""
    root = Path(folder_paths.get_output_directory())
    rel = Path(name.strip().replace("\\", "/") or "memora/eval")
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"run_name must be a relative folder inside the output folder, got {name!r}")
    return root / rel


def diffusers_folders(key: str) -> list[str]:
    """Sub-folders holding a ``model_index.json`` (diffusers pipelines) under the folder paths of ``key``."""
    found = []
    for root in folder_paths.get_folder_paths(key) if key in folder_paths.folder_names_and_paths else []:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, name, "model_index.json")):
                found.append(name)
    return found


def base_model_options() -> list[str]:
    return ([f"checkpoints/{f}" for f in folder_paths.get_filename_list("checkpoints")]
            + [f"diffusers/{d}" for d in diffusers_folders("diffusers")])


def unlearned_options() -> list[str]:
    options = [NONE]
    for key in (UNLEARNED_FOLDER, "diffusion_models", "text_encoders", "loras"):
        if key in folder_paths.folder_names_and_paths:
            options += [f"{key}/{f}" for f in folder_paths.get_filename_list(key)]
    options += [f"{UNLEARNED_FOLDER}/{d}" for d in diffusers_folders(UNLEARNED_FOLDER)]
    options += [f"diffusers/{d}" for d in diffusers_folders("diffusers")]
    return options


def resolve_option(option: str) -> str:
    """``"<folder key>/<name>"`` from one of the combos -> an absolute path (file or diffusers folder)."""
    key, _, name = option.partition("/")
    if not name:
        raise ValueError(f"not a model choice: {option!r}")
    path = folder_paths.get_full_path(key, name)
    if path is None:
        for root in folder_paths.get_folder_paths(key):
            candidate = os.path.join(root, name)
            if os.path.isdir(candidate):
                return candidate
        raise FileNotFoundError(f"{name} not found in ComfyUI's '{key}' model folders "
                                f"({', '.join(folder_paths.get_folder_paths(key))}); refresh the node list (R)")
    return path


def compute_device() -> torch.device:
    import comfy.model_management as mm

    return mm.get_torch_device()


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "fp32" or (choice == "auto" and device.type == "cpu"):
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    return torch.float16


def make_room(model_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models until ``model_bytes`` (plus headroom) fit on ``device``."""
    import comfy.model_management as mm

    if device.type != "cpu":
        mm.free_memory(int(model_bytes * 1.3) + 1024**3, device)
        mm.soft_empty_cache()


def model_bytes(model) -> int:
    total = 0
    for module in (model.unet, model.text_encoder, model.vae):
        if module is not None:
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def unique_adapter_name(prefix: str = "memora") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class NodeProgress:
    """An engine ``ProgressCallback`` driving ComfyUI's progress bar (which also makes loops interruptible).

    One bar per phase. ``preview`` (optional) maps an event to a PIL image shown live on the node.
    """

    def __init__(self, node_id: Optional[str] = None, preview=None, preview_every: int = 10):
        self.node_id = node_id
        self.preview = preview
        self.preview_every = preview_every
        self._bar = None
        self._phase = None

    def __call__(self, event) -> None:
        import comfy.model_management as mm
        import comfy.utils

        if event.phase != self._phase:
            self._phase = event.phase
            self._bar = comfy.utils.ProgressBar(event.total, node_id=self.node_id)
        preview = None
        if self.preview is not None and (event.step % self.preview_every == 0 or event.step >= event.total):
            image = self.preview(event)
            if image is not None:
                preview = ("PNG", image, 512)
        self._bar.update_absolute(event.step, event.total, preview)
        mm.throw_exception_if_processing_interrupted()


def lora_output_path(filename_prefix: str) -> Path:
    """A fresh ``.safetensors`` path under ComfyUI's first ``loras`` folder (never an existing file)."""
    from ..memora.io import next_free_path

    root = Path(folder_paths.get_folder_paths("loras")[0])
    prefix = Path(filename_prefix.strip().replace("\\", "/") or "memora/memora_lora")
    if prefix.is_absolute() or ".." in prefix.parts:
        raise ValueError(f"filename_prefix must be a relative name inside the loras folder, got {filename_prefix!r}")
    folder = root / prefix.parent
    folder.mkdir(parents=True, exist_ok=True)
    return next_free_path(folder, prefix.name, ".safetensors")
