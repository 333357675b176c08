"""Helpers of the real-ComfyUI integration tests (the fixtures are in ``conftest.py``).

Kept in a module of its own so that test files can import them (``from comfy_testing import ...``) without
depending on which ``conftest`` module happens to be in ``sys.modules``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PROMPTS_DIR = HERE / "prompts"
PACK_NAME = "ComfyUI-MemoRa"  # the folder name under custom_nodes (a symlink to the repository)

TINY_BASE = "memora_tiny_base.safetensors"  # models/checkpoints
TINY_UNLEARNED = "memora_tiny_unlearned_unet.safetensors"  # models/unlearned
CONCEPT_IMAGES = ("memora_concept_0.png", "memora_concept_1.png")  # input/
SD15_CKPT = "memora_sd15_random.safetensors"  # models/checkpoints
SD15_LORA = "memora_sd15_test_lora.safetensors"  # models/loras
CONCEPT_PROMPT = "a photo of the tiny concept"

SERVER_START_TIMEOUT = 300  # seconds; ComfyUI needs ~20 s on two busy CPU cores
# CPU threads of the server and of the test process. One by default: on a small shared machine, torch's OpenMP
# threads spin against other processes and a tiny UNet forward goes from ~30 ms (1 thread) to seconds (2 threads).
TEST_THREADS = int(os.environ.get("MEMORA_TEST_THREADS", "1"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")

_PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch, torchvision, torchaudio          # ComfyUI core imports both when it starts
import comfy.model_management, comfy.sd, comfy.utils, folder_paths, nodes, execution, server
from comfy_api.latest import ComfyExtension, io, ui
import aiohttp, diffusers, transformers, peft, safetensors
"""


# ============================================================================== is ComfyUI usable here?
def child_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               DO_NOT_TRACK="1", OMP_NUM_THREADS=str(TEST_THREADS), MKL_NUM_THREADS=str(TEST_THREADS))
    return env


def comfyui_root() -> Path:
    return Path(os.environ["COMFYUI_PATH"].strip()).expanduser().resolve()


def unavailable_reason() -> str | None:
    """Why the integration tests cannot run with this interpreter (``None``: they can)."""
    path = os.environ.get("COMFYUI_PATH", "").strip()
    if not path:
        return ("COMFYUI_PATH not set: integration tests need a ComfyUI checkout "
                "(COMFYUI_PATH=/path/to/ComfyUI, run with ComfyUI's Python environment)")
    root = Path(path).expanduser().resolve()
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir() or not (root / "comfy_api" / "latest").is_dir():
        return (f"COMFYUI_PATH={path} is not a ComfyUI checkout with the V3 node API "
                "(main.py, comfy/ and comfy_api/latest/ expected)")
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, str(root)], cwd=root, env=child_env(),
                               capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"importing ComfyUI from {root} with {sys.executable} took more than 300 s"
    if probe.returncode != 0:
        lines = [ln for ln in (probe.stderr or probe.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {probe.returncode}"
        return (f"ComfyUI at {root} cannot be imported with {sys.executable} ({last}); run these tests with "
                "ComfyUI's Python environment (ComfyUI's requirements.txt, torchvision and torchaudio included)")
    return None


# ====================================================================================== small helpers
def load_prompt(name: str) -> dict:
    """An API-format prompt from ``tests/comfyui/prompts`` (``_meta`` titles kept; ComfyUI ignores them)."""
    return json.loads((PROMPTS_DIR / name).read_text())


def load_node_helper(name: str):
    """``nodes/<name>.py`` of the pack, loaded by path (``import nodes`` is ComfyUI's nodes.py here)."""
    spec = importlib.util.spec_from_file_location(f"memora_test_nodes_{name}", REPO_ROOT / "nodes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def concept_images(n: int = 2, size: int = 64) -> torch.Tensor:
    """``[n, 3, size, size]`` deterministic test images in 0..1: colour gradients with a bright disc."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for i in range(n):
        base = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2
        grad = 0.25 * torch.stack([xx, yy, xx * yy]) * (i + 1) / n
        disc = ((xx - 0.4 * (i - (n - 1) / 2)) ** 2 + yy ** 2 < 0.2).float()
        out.append((base + grad + 0.3 * disc).clamp(0, 1))
    return torch.stack(out)


def png_pixels(path: Path) -> torch.Tensor:
    """A PNG as ``[H, W, 3]`` uint8."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


def comfy_quantize(images: torch.Tensor) -> torch.Tensor:
    """Engine images ``[B, 3, H, W]`` 0..1 -> ``[B, H, W, 3]`` uint8 as SaveImage writes them (truncation)."""
    return (images.movedim(1, -1).float() * 255.0).clamp(0, 255).to(torch.uint8)


def kohya_modules(keys) -> set[str]:
    """Module prefixes of a kohya LoRA, checking that every key is ``lora_unet_*.{lora_down.weight,lora_up.weight,
    alpha}`` and that each module has all three."""
    modules: dict[str, set[str]] = {}
    for key in keys:
        m = re.fullmatch(r"(lora_unet_\w+)\.(lora_down\.weight|lora_up\.weight|alpha)", key)
        assert m, f"not a kohya UNet LoRA key: {key}"
        modules.setdefault(m.group(1), set()).add(m.group(2))
    incomplete = {k: v for k, v in modules.items() if len(v) != 3}
    assert not incomplete, incomplete
    return set(modules)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    return load_file(str(path)), metadata


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc keeps it otherwise; the machine is shared)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================================ folders
@dataclass(frozen=True)
class ComfyDirs:
    """The session's ComfyUI base directory (``--base-directory``) and its sub-folders."""

    base: Path

    @property
    def checkpoints(self) -> Path:
        return self.base / "models" / "checkpoints"

    @property
    def loras(self) -> Path:
        return self.base / "models" / "loras"

    @property
    def unlearned(self) -> Path:
        return self.base / "models" / "unlearned"

    @property
    def input(self) -> Path:
        return self.base / "input"

    @property
    def output(self) -> Path:
        return self.base / "output"

    @property
    def temp(self) -> Path:
        return self.base / "temp"

    def ui_file(self, entry: dict) -> Path:
        """The file of a ``{"filename", "subfolder", "type"}`` ui image entry."""
        root = {"output": self.output, "temp": self.temp, "input": self.input}[entry["type"]]
        return root / entry.get("subfolder", "") / entry["filename"]


# ============================================================================================= server
class ComfyServer:
    """A ComfyUI ``main.py`` subprocess and a minimal HTTP client for it."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path, dirs: ComfyDirs):
        self.url, self.process, self.log_path, self.dirs = url, process, log_path, dirs

    # ------------------------------------------------------------------ http
    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path} -> HTTP {e.code}: {e.read().decode(errors='replace')[:4000]}")
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str, timeout: float = 60) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 60) -> Any:
        return self.request("POST", path, body if body is not None else {}, timeout=timeout)

    # ------------------------------------------------------------------ prompts
    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        r = self.post("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        assert not r.get("node_errors"), r
        return r["prompt_id"]

    def wait(self, prompt_id: str, timeout: float) -> dict:
        """The ``/history`` entry of a finished prompt (success, error or interruption)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        self.post("/interrupt", {"prompt_id": prompt_id})
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s (interrupted it); "
                             f"server log tail:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> tuple[str, dict, str]:
        """Queue a prompt and wait for it; fail with the executor's error and the log unless it succeeded.

        Returns ``(prompt_id, history entry, server log written while it ran)``.
        """
        offset = len(self.log_text())
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout)
        log = self.log_text()[offset:]
        status = entry["status"]
        if status.get("status_str") != "success":
            errors = [m for m in status.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
            raise AssertionError(f"prompt failed: {json.dumps(errors, indent=1)[:6000]}\nserver log:\n{log[-6000:]}")
        return prompt_id, entry, log

    def free(self) -> None:
        """Ask the server to drop its caches and unload models (the idle prompt worker does it at once)."""
        self.post("/free", {"unload_models": True, "free_memory": True})
        time.sleep(2.0)

    # ------------------------------------------------------------------ process
    def log_text(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the ComfyUI server exited with code {self.process.returncode}; log tail:\n"
                                 f"{self.log_tail()}")


def start_server(dirs: ComfyDirs) -> ComfyServer:
    """``main.py --cpu`` with ``--base-directory`` = the session folder (custom_nodes, models, input, output, temp,
    user all inside it), on a free port; returns once it answers HTTP."""
    port = free_port()
    log_path = dirs.base / "comfyui.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(dirs.base),
           "--database-url", f"sqlite:///{dirs.base / 'user' / 'comfyui.db'}"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=comfyui_root(), env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = ComfyServer(f"http://127.0.0.1:{port}", process, log_path, dirs)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while True:
            server.check_alive()
            try:
                server.get("/system_stats", timeout=5)
                return server
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not answer within {SERVER_START_TIMEOUT} s; log tail:\n"
                                         f"{server.log_tail()}")
                time.sleep(0.5)
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: ComfyServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=20)
