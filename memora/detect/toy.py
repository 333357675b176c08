"""The toy world's detector behind the common interface: "does this 16x16 image show a circle / red / striped?"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import file_sha256
from ..toy.detector import HEADS, concept_head, load_detector
from ..toy.model import WEIGHTS_DIR
from .base import Detector, ImageDetection


class ToyConceptDetector(Detector):
    """The shipped toy CNN (``memora/toy/weights/detector.safetensors``). ``target`` is a shape (circle, square,
    triangle, star), a colour or a texture; an image is positive iff that head's argmax is ``target``. Its shape
    head has reject classes (``empty``, ``other``) so that shapeless blobs are not counted as circles."""

    name = "toy"
    batch_size = 256

    def __init__(self, target: str = "circle", *, weights: str | Path | None = None,
                 device: str | torch.device = "cpu"):
        self.head = concept_head(target)  # raises InputError for unknown concepts
        self.target = target
        self.weights = Path(weights) if weights is not None else WEIGHTS_DIR / "detector.safetensors"
        self.model = load_detector(self.weights, device=device)
        self.device = torch.device(device)

    def protocol(self) -> dict[str, Any]:
        return {"detector": self.name, "target": self.target, "head": self.head,
                "model_file": str(self.weights), "model_sha256": file_sha256(self.weights),
                "preprocessing": "RGB 0..1, bilinear antialiased resize to 16x16",
                "rule": f"positive iff the {self.head} head's top class is {self.target!r}"}

    @torch.no_grad()
    def _detect(self, arrays: list[np.ndarray]) -> list[ImageDetection]:
        classes = HEADS[self.head]
        out = []
        for a in arrays:  # images may differ in size: the model resizes each to 16x16
            x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).float().div(255).to(self.device)
            probs = self.model(x)[self.head].softmax(-1)[0].cpu()
            top = int(probs.argmax())
            out.append(ImageDetection(positive=classes[top] == self.target,
                                      score=float(probs[classes.index(self.target)]), label=classes[top],
                                      scores={c: round(float(p), 6) for c, p in zip(classes, probs)}))
        return out
