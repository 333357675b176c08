"""ComfyUI V3 nodes of ComfyUI-MemoRa: thin adapters around the ``memora`` engine.

Importing this package is cheap: the engine's heavy dependencies (diffusers, transformers, peft) are imported
inside ``execute``, when a node first runs.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .common import register_model_folders
from .model_nodes import LoadUnlearnedModel, MemoraToComfy
from .recovery_nodes import DDIMInvert, Regenerate, SlerpBatch
from .sampling_nodes import AutoMemoraSampler, Generate
from .training_nodes import ApplyMemoraLoRA, TrainMemoraLoRA

NODES: list[type[io.ComfyNode]] = [
    LoadUnlearnedModel,
    DDIMInvert,
    SlerpBatch,
    Regenerate,
    TrainMemoraLoRA,
    ApplyMemoraLoRA,
    Generate,
    AutoMemoraSampler,
    MemoraToComfy,
]


class MemoraExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        register_model_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
