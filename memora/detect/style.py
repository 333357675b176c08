"""Art-style detection with a user-supplied Hugging Face image classifier (the literature's WikiArt artist ViT).

The classifier of UnlearnDiffAtk / MemoRa (129 WikiArt artists, labels like ``vincent-van-gogh``) is only
distributed by its authors, so no style weights ship with MemoRa: point ``StyleDetector`` at the folder
(``config.json`` with ``id2label``, ``preprocessor_config.json``, ``model.safetensors`` or ``pytorch_model.bin``).
Success, as in UnlearnDiffAtk's ``style_analysis.py``: the target label is among the top-k classes.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, WeightFormatError
from .base import Detector, ImageDetection, folder_fingerprint


def _norm(label: str) -> str:
    return label.strip().lower().replace("_", "-").replace(" ", "-")


class StyleDetector(Detector):
    """``StyleDetector(folder, target="vincent-van-gogh", top_k=1)``: positive iff ``target`` is in the top-k."""

    name = "style"
    batch_size = 16

    def __init__(self, folder: str | os.PathLike, target: str = "vincent-van-gogh", *, top_k: int = 1,
                 device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"the style detector needs a Hugging Face image-classification folder (config.json, "
                             f"preprocessor_config.json, model.safetensors); {folder} is not a folder")
        for needed in ("config.json", "preprocessor_config.json"):
            if not (folder / needed).is_file():
                raise WeightFormatError(f"{folder} has no {needed}; a Hugging Face image-classification folder "
                                        "(as saved by Trainer or save_pretrained) is expected")
        if not any((folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
            raise WeightFormatError(f"{folder} has no model.safetensors or pytorch_model.bin")
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        # transformers reads .bin files with torch.load(weights_only=True); remote code is never run.
        self.model = AutoModelForImageClassification.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False).to(device).eval().requires_grad_(False)
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        self.device = torch.device(device)
        self.folder = folder
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.target_id = self.resolve_label(target)
        self.target = self.labels[self.target_id]
        self.top_k = min(int(top_k), len(self.labels))

    def resolve_label(self, target: str) -> int:
        """The class id of ``target`` (case, spaces and underscores ignored: "Vincent Van Gogh" works)."""
        wanted = _norm(target)
        for i, label in enumerate(self.labels):
            if _norm(label) == wanted:
                return i
        close = difflib.get_close_matches(wanted, [_norm(x) for x in self.labels], n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else f"; it has {len(self.labels)} labels, e.g. " + \
            ", ".join(self.labels[:5])
        raise InputError(f"the style classifier in {self.folder} has no label {target!r}{hint}")

    def protocol(self) -> dict[str, Any]:
        return {"detector": self.name, "model_file": str(self.folder),
                "model_sha256": folder_fingerprint(self.folder),
                "architecture": type(self.model).__name__, "classes": len(self.labels),
                "target": self.target, "top_k": self.top_k,
                "preprocessing": f"the folder's {type(self.processor).__name__}",
                "rule": f"positive iff {self.target!r} is among the top-{self.top_k} classes"}

    @torch.no_grad()
    def _detect(self, arrays: list[np.ndarray]) -> list[ImageDetection]:
        inputs = self.processor(images=list(arrays), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        probs = self.model(pixel_values=pixel_values).logits.float().softmax(-1).cpu()
        out = []
        for p in probs:
            order = p.argsort(descending=True)
            top = [int(i) for i in order[: max(self.top_k, 5)]]
            out.append(ImageDetection(positive=self.target_id in top[: self.top_k],
                                      score=float(p[self.target_id]), label=self.labels[top[0]],
                                      scores={self.labels[i]: round(float(p[i]), 6) for i in top}))
        return out
