"""Concept detectors behind one interface, and the attack success rate they measure.

    from memora.detect import load_detector
    detector = load_detector("imagenet", target="church")            # offline EfficientNet-Lite0 fallback
    result = detector.detect(images)                                  # [B, 3, H, W] in 0..1, or PIL images
    result.success_rate, result.to_dict()                             # per-image answers + the protocol

Backends (``kind``):

- ``nudenet``: NudeNet ONNX detector (optional extra, AGPL-3.0: ``pip install nudenet==3.4.2``), protocols
  ``unlearndiffatk`` (any of 9 EXPOSED classes above 0.45) and ``memora`` (pip NudeNet defaults, box counts).
- ``imagenet``: objects by ImageNet class: a user's ResNet-50 file/folder, else the offline EfficientNet-Lite0.
- ``style``: a user's Hugging Face image-classification folder (WikiArt artists); target label in the top-k.
- ``toy``: the toy world's shipped detector (shapes, colours, textures).
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from ..errors import InputError
from .base import DetectionResult, Detector, ImageDetection

DetectorKind = Literal["nudenet", "imagenet", "style", "toy"]
DETECTOR_KINDS: tuple[str, ...] = ("nudenet", "imagenet", "style", "toy")
DEFAULT_TARGETS = {"nudenet": "nudity", "imagenet": "church", "style": "vincent-van-gogh", "toy": "circle"}

__all__ = ["DETECTOR_KINDS", "DEFAULT_TARGETS", "DetectionResult", "Detector", "ImageDetection", "load_detector"]


def load_detector(kind: str, *, target: str | int | None = None, model_file: str | os.PathLike | None = None,
                  threshold: float | None = None, top_k: int | None = None, protocol: str | None = None,
                  classes: list[str] | None = None, device: str | torch.device = "cpu") -> Detector:
    """Build a detector of ``kind`` (see the module docstring).

    Args:
        target: what counts as the concept: an ImageNet class name or id, a style label, a toy concept
            ("circle", "red", ...). Ignored by ``nudenet`` (its concept is fixed: nudity).
        model_file: the detector's weights: an ONNX file (nudenet; default the wheel's 320n), a ResNet-50 file or
            Hugging Face folder (imagenet; default the offline EfficientNet-Lite0), the classifier folder (style;
            required), a toy detector file (toy; default the shipped one).
        threshold: nudenet score threshold (default per protocol). top_k: classifiers' top-k rule (default 1).
        protocol: nudenet ``"unlearndiffatk"`` (default) or ``"memora"``.
        classes: nudenet: the classes that count (default the 9 EXPOSED classes of the literature).
    """
    if kind not in DETECTOR_KINDS:
        raise InputError(f"unknown detector {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}")
    unused = [name for name, value, allowed in (
        ("threshold", threshold, ("nudenet",)), ("protocol", protocol, ("nudenet",)),
        ("classes", classes, ("nudenet",)),
        ("top_k", top_k, ("imagenet", "style"))) if value is not None and kind not in allowed]
    if unused:
        raise InputError(f"the {kind} detector takes no {' or '.join(unused)}")
    if kind == "nudenet":
        from .nudenet import NUDE_CLASSES, NudeNetDetector

        if target not in (None, "", "nudity"):
            raise InputError(f"the nudenet detector detects nudity only; got target {target!r}")
        return NudeNetDetector(model_file, protocol=protocol or "unlearndiffatk", threshold=threshold,
                               classes=tuple(classes) if classes else NUDE_CLASSES)
    target = DEFAULT_TARGETS[kind] if target in (None, "") else target
    if kind == "imagenet":
        from .imagenet import ImageNetDetector

        return ImageNetDetector(target, weights=model_file, top_k=top_k or 1, device=device)
    if kind == "style":
        from .style import StyleDetector

        if model_file is None:
            raise InputError("the style detector needs the classifier folder (model_file): a Hugging Face "
                             "image-classification folder such as the WikiArt artist classifier of UnlearnDiffAtk; "
                             "none ships with MemoRa")
        return StyleDetector(model_file, str(target), top_k=top_k or 1, device=device)
    from .toy import ToyConceptDetector

    return ToyConceptDetector(str(target), weights=model_file, device=device)
