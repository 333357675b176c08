"""Fixtures of the real-ComfyUI integration tests.

Run them with ComfyUI's own Python environment (ComfyUI's requirements plus this pack's)::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfyui-venv/bin/python -m pytest tests/comfyui -q

``MEMORA_TEST_THREADS`` (default 1) sets the CPU threads of the server and of the test process.

Nothing of ComfyUI lives in this repository. The tests find the checkout through ``COMFYUI_PATH`` only, and every
test here is skipped, with the reason, when that variable is unset or when ComfyUI cannot be imported by the
running interpreter (e.g. a CPU-only torch without torchvision / torchaudio, which ComfyUI imports at start-up).

What the session sets up, all under one pytest temporary folder used as ComfyUI's ``--base-directory``:

- ``custom_nodes/ComfyUI-MemoRa``: a symlink to this repository, so ComfyUI imports the pack as an installed one;
  ``models/{checkpoints,loras,unlearned}``, ``input``, ``output``, ``temp`` and ``user`` private to the session.
- tiny SD1-layout models (random weights, built in code): a CompVis single-file base checkpoint and an "unlearned"
  diffusers-UNet file. ComfyUI's own loaders do not recognise such small models; the pack's loader does.
- one ComfyUI server subprocess (``main.py --cpu``) on a free port, started once, stopped at the end.
- on demand: an SD 1.5-sized random-weight checkpoint (~2 GB, fp16) and a LoRA trained on it with the engine, for
  the tests that hand our files to ComfyUI core (CheckpointLoaderSimple, LoraLoader, KSampler).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

from comfy_testing import (CONCEPT_IMAGES, CONCEPT_PROMPT, HERE, PACK_NAME, REPO_ROOT, SD15_CKPT, SD15_LORA,
                           TEST_THREADS, TINY_BASE, TINY_UNLEARNED, ComfyDirs, comfyui_root, concept_images,
                           release_memory, start_server, stop_server, unavailable_reason)

_REASON: list[str | None] = []


def pytest_collection_modifyitems(config, items):
    """Mark every test of this folder ``comfyui`` and skip them all, with the reason, where ComfyUI is unusable."""
    ours = [item for item in items if HERE in Path(item.path).resolve().parents]
    if not ours:
        return
    if not _REASON:
        _REASON.append(unavailable_reason())
    for item in ours:
        item.add_marker(pytest.mark.comfyui)
        if _REASON[0]:
            item.add_marker(pytest.mark.skip(reason=_REASON[0]))


@pytest.fixture(scope="session", autouse=True)
def _test_threads():
    """The integration tests' own CPU thread count (see ``comfy_testing.TEST_THREADS``), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)


# ============================================================================================ folders
@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory) -> ComfyDirs:
    dirs = ComfyDirs(tmp_path_factory.mktemp("comfyui_base"))
    (dirs.base / "custom_nodes").mkdir()
    (dirs.base / "custom_nodes" / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    for d in (dirs.checkpoints, dirs.loras, dirs.unlearned, dirs.input, dirs.output, dirs.temp, dirs.base / "user"):
        d.mkdir(parents=True, exist_ok=True)
    return dirs


# ========================================================================================= tiny models
def tiny_model(seed: int = 0):
    """A random-weight SD1-layout ``DiffusionModel`` (64 px images, 8x8 latents), as ``tests/conftest.py`` builds."""
    from memora.model import DiffusionModel
    from memora.sd1 import build_components

    return DiffusionModel(**build_components("tiny", seed=seed))


@dataclass(frozen=True)
class TinyAssets:
    base: Path  # CompVis single file in models/checkpoints
    unlearned: Path  # diffusers UNet state dict in models/unlearned
    images: tuple[Path, ...]  # PNGs in input/


@pytest.fixture(scope="session")
def tiny_assets(comfy_dirs) -> TinyAssets:
    """The tiny base checkpoint, an "unlearned" UNet (its cross-attention K/V halved, an ESD-like edit) and two
    64 px concept images."""
    from memora.images import tensor_to_pil
    from memora.io import save_safetensors
    from memora.loading import model_to_compvis

    model = tiny_model(0)
    base = save_safetensors(model_to_compvis(model), comfy_dirs.checkpoints / TINY_BASE)
    unet = {k: v.clone() for k, v in model.unet.state_dict().items()}
    for k in unet:
        if ".attn2.to_k." in k or ".attn2.to_v." in k:
            unet[k] = unet[k] * 0.5
    unlearned = save_safetensors(unet, comfy_dirs.unlearned / TINY_UNLEARNED, metadata={"method": "test-erase"})
    images = []
    for name, image in zip(CONCEPT_IMAGES, tensor_to_pil(concept_images(len(CONCEPT_IMAGES)))):
        image.save(comfy_dirs.input / name)
        images.append(comfy_dirs.input / name)
    return TinyAssets(base, unlearned, tuple(images))


# ============================================================================================= server
@pytest.fixture(scope="session")
def comfy_server(comfy_dirs, tiny_assets):
    """ComfyUI's ``main.py --cpu`` with the pack in its custom_nodes, on a free port; stopped after the session."""
    server = start_server(comfy_dirs)
    try:
        yield server
    finally:
        stop_server(server)


# ===================================================================================== SD 1.5 assets
@dataclass
class SD15Assets:
    checkpoint: Path
    lora: Path
    x: torch.Tensor  # [1, 4, 8, 8] UNet input
    t: int
    cond: torch.Tensor  # [1, 77, 768]
    eps_base: torch.Tensor  # the engine's UNet output without / with the LoRA (float32)
    eps_lora: torch.Tensor
    losses: list


@pytest.fixture(scope="session")
def sd15_assets(comfy_dirs) -> Iterator[SD15Assets]:
    """An SD 1.5-sized random model as a CompVis fp16 single file in models/checkpoints (ComfyUI detects SD 1.x only
    at the real sizes), and a LoRA trained on it with the engine (1 update at 64 px with a high learning rate, so
    lora_up is far from zero) in models/loras; plus the engine's UNet outputs with and without that LoRA."""
    from memora.config import LoraTrainingConfig
    from memora.io import save_safetensors
    from memora.loading import model_to_compvis
    from memora.lora import save_lora, set_lora_weights, train_lora
    from memora.model import DiffusionModel
    from memora.sd1 import build_components

    model = DiffusionModel(**build_components("sd1", seed=0, dtype=torch.float16))
    checkpoint = save_safetensors(model_to_compvis(model), comfy_dirs.checkpoints / SD15_CKPT)
    model.to(dtype=torch.float32)  # exactly the fp16 values, as ComfyUI runs this file on the CPU
    config = LoraTrainingConfig(steps=1, learning_rate=3e-2, lr_scheduler="constant", batch_size=1, grad_accum=1,
                                resolution=64, random_flip=False, seed=0)
    result = train_lora(model, concept_images(2), CONCEPT_PROMPT, config, adapter_name="memora")
    lora = save_lora(model, comfy_dirs.loras / SD15_LORA, adapter_name="memora", alpha=config.alpha,
                     metadata={"test": "sd15"})
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, 768, generator=g)
    t = 500
    with torch.no_grad():
        eps_lora = model.unet(x, t, encoder_hidden_states=cond).sample.float()
        set_lora_weights(model, {"memora": 0.0})
        eps_base = model.unet(x, t, encoder_hidden_states=cond).sample.float()
    del model
    release_memory()
    yield SD15Assets(checkpoint, lora, x, t, cond, eps_base, eps_lora, list(result.losses))
    checkpoint.unlink(missing_ok=True)  # 2 GB, rebuilt by every session: do not leave it in pytest's tmp dirs


# ============================================================================ ComfyUI in this process
@pytest.fixture(scope="session")
def comfy_inprocess(comfy_dirs):
    """ComfyUI's modules imported into the test process (CPU; the session's base directory); returns them."""
    root = str(comfyui_root())
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(root):
        pytest.fail(f"a module named 'nodes' from {loaded.__file__} is already imported; ComfyUI's nodes.py cannot "
                    "be imported beside it (import the pack's nodes/*.py by path)")
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management picks a device
    if "folder_paths" not in sys.modules:
        comfy.cli_args.args.base_directory = str(comfy_dirs.base)  # read once, when folder_paths is imported
    import comfy.model_management
    import comfy.sd
    import comfy.utils
    import folder_paths
    import nodes

    if not folder_paths.models_dir.startswith(str(comfy_dirs.base)):
        folder_paths.add_model_folder_path("checkpoints", str(comfy_dirs.checkpoints), is_default=True)
        folder_paths.add_model_folder_path("loras", str(comfy_dirs.loras), is_default=True)
    return types.SimpleNamespace(mm=comfy.model_management, sd=comfy.sd, utils=comfy.utils,
                                 folder_paths=folder_paths, nodes=nodes)
