"""Plumbing shared by the nodes: devices and memory, model folders, progress and interruption."""

from __future__ import annotations

import logging
import os
import time
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


def filenames(key: str) -> list[str]:
    """``folder_paths.get_filename_list(key)``, robust to a model folder deleted while ComfyUI runs (its cache
    then points at a missing folder and raises): the stale cache entry is dropped and the folder listed again."""
    if key not in folder_paths.folder_names_and_paths:
        return []
    try:
        return folder_paths.get_filename_list(key)
    except OSError:
        getattr(folder_paths, "filename_list_cache", {}).pop(key, None)
        try:
            return folder_paths.get_filename_list(key)
        except OSError:
            return []


def detector_file_options() -> list[str]:
    """``[default]`` + files and Hugging Face folders (holding a config.json) under ``models/concept_detectors``."""
    options = ["[default]"]
    if DETECTOR_FOLDER not in folder_paths.folder_names_and_paths:
        return options
    options += filenames(DETECTOR_FOLDER)
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
    return ([f"checkpoints/{f}" for f in filenames("checkpoints")]
            + [f"diffusers/{d}" for d in diffusers_folders("diffusers")])


def unlearned_options() -> list[str]:
    options = [NONE]
    for key in (UNLEARNED_FOLDER, "diffusion_models", "text_encoders", "loras"):
        if key in folder_paths.folder_names_and_paths:
            options += [f"{key}/{f}" for f in filenames(key)]
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

    With a node id and a running ``PromptServer`` it also keeps the node's text legible during long runs (both are
    throttled to ``text_interval`` seconds, ~4 per second, and the last step of a phase is always sent):

    - a one-line progress text, ``PromptServer.send_progress_text`` (ComfyUI's frontend shows it on the node), e.g.
      ``"train 120/500 · loss 0.0123 · 4.1 it/s · ETA 0:29"``, ``"invert 12/35"``, ``"detect 3/4"``;
    - for events that carry a loss, a ``"memora.loss"`` websocket event ``{"node", "prompt_id", "phase", "step",
      "total", "points": [[step, loss], ...]}`` with every loss since the previous one (``js/memora.js`` draws the
      live loss curve of Train MemoRa LoRA from it).

    Without a server (the CLI, unit tests) only the progress bar is driven.
    """

    TEXT_INTERVAL = 0.25  # seconds between two progress texts / loss events of one node (the last step always goes)
    LOSS_EVENT = "memora.loss"

    def __init__(self, node_id: Optional[str] = None, preview=None, preview_every: int = 10,
                 text: bool = True, text_interval: float = TEXT_INTERVAL):
        self.node_id = node_id
        self.preview = preview
        self.preview_every = preview_every
        self.text = text
        self.text_interval = text_interval
        self._bar = None
        self._phase = None
        self._phase_start = None  # (time.monotonic(), step) of the phase's first event: the speed is measured from it
        self._last_sent = None  # time.monotonic() of the last text / loss event
        self._step = 0  # the last event's step
        self._losses: list[list] = []  # [step, loss] not sent yet

    def __call__(self, event) -> None:
        import comfy.model_management as mm
        import comfy.utils

        new_phase = event.phase != self._phase
        if new_phase:
            self._phase = event.phase
            self._bar = comfy.utils.ProgressBar(event.total, node_id=self.node_id)
        if new_phase or self._phase_start is None or event.step < self._step:  # (a phase run again restarts)
            self._phase_start = (time.monotonic(), event.step)
            self._losses = []
        self._step = event.step
        if event.loss is not None:
            self._losses.append([int(event.step), float(event.loss)])
        self._send_text(event, force=new_phase)
        preview = None
        if self.preview is not None and (event.step % self.preview_every == 0 or event.step >= event.total):
            image = self.preview(event)
            if image is not None:
                preview = ("PNG", image, 512)
        try:
            self._bar.update_absolute(event.step, event.total, preview)
            mm.throw_exception_if_processing_interrupted()
        except mm.InterruptProcessingException:  # Cancel: say where it stopped, with the losses not sent yet
            self._send_text(event, force=True, suffix="cancelled")
            raise

    # ------------------------------------------------------------------------------------------ progress text
    @staticmethod
    def format_duration(seconds: float) -> str:
        """``29 -> "0:29"``, ``3723 -> "1:02:03"`` (whole seconds, rounded)."""
        seconds = max(0, int(round(seconds)))
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

    @staticmethod
    def format_loss(loss: float) -> str:
        import math

        if not math.isfinite(loss):
            return str(loss)
        return f"{loss:.4f}" if loss == 0 or 1e-3 <= abs(loss) < 1e4 else f"{loss:.3e}"

    @staticmethod
    def format_text(phase: str, step: int, total: int, loss: Optional[float] = None,
                    rate: Optional[float] = None, elapsed: Optional[float] = None, suffix: str = "") -> str:
        """The one-line progress text: ``"train 120/500 · loss 0.0123 · 4.1 it/s · ETA 0:29"``.

        ``rate`` is in steps per second (shown as ``s/it`` below 1); the ETA is ``(total - step) / rate``; at the
        last step ``elapsed`` (seconds) is shown instead (``"done in 2:04"``). ``suffix`` is appended (``"cancelled"``).
        """
        parts = [f"{phase} {step}/{total}"]
        if loss is not None:
            parts.append(f"loss {NodeProgress.format_loss(loss)}")
        if rate is not None and rate > 0:
            parts.append(f"{rate:.1f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it")
            if step < total and not suffix:
                parts.append(f"ETA {NodeProgress.format_duration((total - step) / rate)}")
        if step >= total and elapsed is not None:
            parts.append(f"done in {NodeProgress.format_duration(elapsed)}")
        if suffix:
            parts.append(suffix)
        return " · ".join(parts)

    def _send_text(self, event, force: bool = False, suffix: str = "") -> None:
        """Send the progress text (and the pending losses) unless throttled; never raises."""
        if not self.text or self.node_id is None:
            return
        now = time.monotonic()
        last = event.step >= event.total
        if not (force or last or self._last_sent is None or now - self._last_sent >= self.text_interval):
            return
        try:
            from server import PromptServer

            instance = getattr(PromptServer, "instance", None)
            if instance is None:
                return
            self._last_sent = now
            rate = elapsed = None
            if self._phase_start is not None:
                t0, s0 = self._phase_start  # the phase's first event: its first step(s) are not timed
                if event.step > s0:
                    timed = now - t0
                    if event.step - s0 >= 2 and timed > 0:  # the speed needs two timed steps
                        rate = (event.step - s0) / timed
                    elapsed = timed * event.step / (event.step - s0)  # (+ the untimed first steps, at that speed)
            sid = getattr(instance, "client_id", None)
            if hasattr(instance, "send_progress_text"):
                text = self.format_text(event.phase, event.step, event.total, event.loss, rate, elapsed, suffix)
                instance.send_progress_text(text, self.node_id, sid)
            if self._losses:
                points, self._losses = self._losses, []
                instance.send_sync(self.LOSS_EVENT, {"node": str(self.node_id), "prompt_id": self._prompt_id(instance),
                                                     "phase": event.phase, "step": int(event.step),
                                                     "total": int(event.total), "points": points}, sid)
        except Exception as error:  # the text is a nicety: never let it break a run
            if not getattr(self, "_warned", False):
                self._warned = True
                logging.getLogger(__name__).debug("MemoRa progress text not sent: %s", error)

    @staticmethod
    def _prompt_id(instance) -> Optional[str]:
        try:
            from comfy_execution.utils import get_executing_context

            context = get_executing_context()
            if context is not None and context.prompt_id is not None:
                return context.prompt_id
        except Exception:
            pass
        return getattr(instance, "last_prompt_id", None)


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
