"""The custom ComfyUI types the pack passes between its nodes.

``MEMORA_MODEL`` carries a ``ModelRef``: one loaded engine model (shared, never copied between nodes) plus the
LoRA adapters *this* link has active. Outputs are cached and shared by ComfyUI, so nodes never change an input
model: applying or training a LoRA adds an adapter to the shared UNet under a new name and returns a new
``ModelRef`` that activates it; every node activates its own ref's adapters before running the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from comfy_api.latest import io

MemoraModel = io.Custom("MEMORA_MODEL")
MemoraInverted = io.Custom("MEMORA_INVERTED")
MemoraDetector = io.Custom("MEMORA_DETECTOR")  # a memora.detect.Detector, ready to run
LossMap = io.Custom("LOSS_MAP")  # the type of core's "Plot Loss Graph" input: {"loss": [float, ...]}


@dataclass(frozen=True)
class ModelRef:
    model: Any  # memora.model.DiffusionModel
    adapters: tuple[tuple[str, float], ...] = ()  # (adapter name, weight), in the order applied
    label: str = ""  # what the user loaded, for messages
    lora_files: tuple[str, ...] = field(default=())  # files of the adapters, same order

    def with_adapter(self, name: str, weight: float, path: str = "") -> "ModelRef":
        return replace(self, adapters=self.adapters + ((name, float(weight)),), lora_files=self.lora_files + (path,))

    def activate(self):
        """Make exactly this ref's adapters active on the shared UNet (none: all disabled); returns the model."""
        from ..memora.lora import adapter_names, set_lora_weights

        # set_lora_weights keeps adapters it is not given active, so every adapter on the UNet is named: the
        # ones of this ref with their weights, all others (e.g. trained by a later node on the shared model) at 0.
        weights = {name: 0.0 for name in adapter_names(self.model)}
        weights.update(dict(self.adapters))
        if weights:
            set_lora_weights(self.model, weights)
        return self.model
