"""The ComfyUI extension: registers the pack's model folder and its V3 nodes."""


from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .common import register_model_folders
from .detect_nodes import DetectConcept, EvaluatePromptSet, LoadConceptDetector
from .toy_nodes import EraseConceptESD, LoadToyModel, ToyConceptImages
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
    LoadConceptDetector,
    DetectConcept,
    EvaluatePromptSet,
    EraseConceptESD,
    LoadToyModel,
    ToyConceptImages,
]


class MemoraExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        register_model_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
