"""What every concept detector shares: the result records, image normalisation and the file fingerprint.

A detector answers, per image, "is the concept there?" (``positive``), with a ``score`` and everything it looked
at (``scores``: class -> score; ``detections``: boxes for the nudity detector). A ``DetectionResult`` carries the
per-image answers together with the ``protocol`` that produced them (detector, file, sha256, threshold, class set,
preprocessing), so a success rate is never separated from how it was measured.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError, MissingDependencyError
from ..io import file_sha256


@dataclass
class ImageDetection:
    positive: bool
    score: float  # the score the decision was taken on (0 when nothing was found)
    label: str = ""  # the top class (classifiers) or the strongest counted class (nudity)
    scores: dict[str, float] = field(default_factory=dict)  # top-k classes, or counted classes found
    detections: list[dict[str, Any]] = field(default_factory=list)  # boxes: {"class", "score", "box": [x, y, w, h]}
    source: str = ""  # the image file, when the image came from one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DetectionResult:
    protocol: dict[str, Any]
    images: list[ImageDetection]

    @property
    def positives(self) -> int:
        return sum(1 for d in self.images if d.positive)

    @property
    def success_rate(self) -> float:
        """Share of images in which the concept was detected (the attack success rate); 0 for no images."""
        return self.positives / len(self.images) if self.images else 0.0

    def class_counts(self) -> dict[str, int]:
        """Boxes per class over all images (the MemoRa code's NudeNet statistic); empty for classifiers."""
        counts: dict[str, int] = {}
        for image in self.images:
            for det in image.detections:
                counts[det["class"]] = counts.get(det["class"], 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        out = {"protocol": self.protocol, "images": len(self.images), "positives": self.positives,
               "success_rate": self.success_rate}
        if any(d.detections for d in self.images) or self.protocol.get("detector") == "nudenet":
            counts = self.class_counts()
            # the MemoRa code's table: boxes of each counted class (zeros included), then every class found
            out["class_counts"] = {c: counts.get(c, 0) for c in self.protocol.get("classes", sorted(counts))}
            out["all_class_counts"] = counts
        out["results"] = [d.to_dict() for d in self.images]
        return out


class Detector:
    """Base class: subclasses set ``name`` and implement ``_detect(arrays)`` on uint8 ``[H, W, 3]`` RGB arrays."""

    name = "detector"
    batch_size = 8

    def protocol(self) -> dict[str, Any]:
        raise NotImplementedError

    def _detect(self, arrays: list[np.ndarray]) -> list[ImageDetection]:
        raise NotImplementedError

    def detect(self, images, *, sources: Sequence[str] | None = None, callback=None) -> DetectionResult:
        """Detect the concept in ``images``: a ``[B, 3, H, W]`` tensor in 0..1, or a list of PIL images,
        ``[3, H, W]`` tensors or uint8 ``[H, W, 3]`` arrays of any sizes and modes. ``callback`` gets
        ``report(callback, "detect", done, total)`` after each batch."""
        from ..progress import report

        arrays = to_rgb_arrays(images)
        if sources is not None and len(sources) != len(arrays):
            raise InputError(f"{len(arrays)} images but {len(sources)} source names")
        found: list[ImageDetection] = []
        for start in range(0, len(arrays), self.batch_size):
            found.extend(self._detect(arrays[start:start + self.batch_size]))
            report(callback, "detect", len(found), len(arrays))
        for i, det in enumerate(found):
            if sources is not None:
                det.source = str(sources[i])
        return DetectionResult(self.protocol(), found)

    def detect_files(self, paths: Sequence[str | os.PathLike], *, callback=None) -> DetectionResult:
        """Detect in image files, read in batches (any format PIL reads; any mode)."""
        from PIL import Image

        from ..progress import report

        paths = [Path(p) for p in paths]
        found: list[ImageDetection] = []
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start:start + self.batch_size]
            arrays = []
            for p in chunk:
                try:
                    with Image.open(p) as im:
                        arrays.append(pil_to_rgb_array(im))
                except OSError as e:
                    raise InputError(f"cannot read image {p}: {e}") from e
            for det, p in zip(self._detect(arrays), chunk):
                det.source = str(p)
                found.append(det)
            report(callback, "detect", len(found), len(paths))
        return DetectionResult(self.protocol(), found)


def pil_to_rgb_array(image) -> np.ndarray:
    """Any PIL image -> uint8 ``[H, W, 3]`` RGB (transparency composited on white, grayscale replicated)."""
    from ..images import to_rgb

    return np.asarray(to_rgb(image), dtype=np.uint8).copy()


def to_rgb_arrays(images) -> list[np.ndarray]:
    """Normalise detector input to a list of uint8 ``[H, W, 3]`` RGB arrays (see ``Detector.detect``)."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] not in (1, 3, 4):
            raise InputError(f"expected images [B, 3, H, W] in 0..1, got shape {tuple(images.shape)}")
        images = list(images)
    out = []
    for i, image in enumerate(images):
        if isinstance(image, Image.Image):
            out.append(pil_to_rgb_array(image))
        elif isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
                raise InputError(f"image {i}: expected [3, H, W] in 0..1, got shape {tuple(image.shape)}")
            x = image.detach().float().cpu().clamp(0, 1)
            if x.shape[0] == 1:
                x = x.expand(3, -1, -1)
            elif x.shape[0] == 4:  # composite on white, as for files
                x = x[:3] * x[3:] + (1 - x[3:])
            out.append((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy())
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError(f"image {i}: arrays must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
            out.append(image)
        else:
            raise InputError(f"image {i}: unsupported type {type(image).__name__}")
        if min(out[-1].shape[:2]) < 1:
            raise InputError(f"image {i} is empty")
    return out


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the weight and config files of a model folder (names and contents, sorted)."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".txt"):
            h.update(p.name.encode())
            h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()


def require(module: str, install: str, purpose: str):
    """Import an optional dependency or raise ``MissingDependencyError`` with the exact install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{purpose} needs the Python package providing '{module}', which is not "
                                     f"installed ({e}). Install it into the Python that runs MemoRa: {install}") from e
