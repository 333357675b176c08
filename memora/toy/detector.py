"""The toy world's concept detector: a small CNN that names the shape, colour, background and texture of an image.

Its shape head has two reject classes besides the four shapes: ``empty`` (no object) and ``other`` (a coloured
blob or ellipse that is no toy shape). Without ``other`` the shapeless blobs an erased model draws would be
counted as circles (the prototype's lesson), so a "circle rate" is only meaningful with it.

Trained by ``scripts/train_toy.py`` on procedural data (``train_detector``); shipped as
``weights/detector.safetensors``; it is the toy backend of concept detection. ``concept_mask(images, concept)``
answers "does each image show ``concept``?" for a shape, a colour or a texture word.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..progress import ProgressCallback, report
from . import data

SHAPE_CLASSES: tuple[str, ...] = (*data.SHAPES, "empty", "other")
COLOR_CLASSES: tuple[str, ...] = tuple(data.COLORS)
BACKGROUND_CLASSES: tuple[str, ...] = tuple(data.BACKGROUNDS)
TEXTURE_CLASSES: tuple[str, ...] = data.TEXTURES
HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPE_CLASSES, "color": COLOR_CLASSES,
                                     "background": BACKGROUND_CLASSES, "texture": TEXTURE_CLASSES}


class ToyDetector(nn.Module):
    """conv3x3(3->32)-ReLU-conv(32->32)-ReLU-maxpool-conv(32->64)-ReLU-maxpool-conv(64->64)-ReLU-global avg pool,
    then one linear head per attribute. Input ``[B, 3, 16, 16]`` in 0..1 (other sizes are resized)."""

    resolution = 16

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(64, len(classes)) for name, classes in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images [B, 3, H, W]`` 0..1 -> logits per head ``{"shape": [B, 6], "color": [B, 4], ...}``."""
        x = images.to(next(self.parameters()).dtype)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        h = self.features(x * 2 - 1).mean(dim=(2, 3))
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, list[str]]:
        """Argmax class names per head: ``{"shape": ["circle", ...], "color": [...], ...}``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected images [B, 3, H, W] in 0..1, got {tuple(images.shape)}")
        out: dict[str, list[str]] = {name: [] for name in HEADS}
        device = next(self.parameters()).device
        for chunk in images.split(batch_size):
            logits = self(chunk.to(device))
            for name, classes in HEADS.items():
                out[name] += [classes[int(i)] for i in logits[name].argmax(1)]
        return out

    def concept_mask(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        """Bool ``[B]``: the image shows ``concept`` (a shape, colour or texture word)."""
        head = concept_head(concept)
        return torch.tensor([c == concept for c in self.classify(images)[head]])

    def concept_rate(self, images: torch.Tensor, concept: str) -> float:
        """Fraction of images that show ``concept``."""
        mask = self.concept_mask(images, concept)
        return float(mask.float().mean()) if len(mask) else 0.0


def concept_head(concept: str) -> str:
    """Which head decides ``concept`` ("circle" -> "shape", "red" -> "color", "striped" -> "texture")."""
    for name in ("shape", "color", "texture", "background"):
        if concept in HEADS[name] and concept not in ("empty", "other", "plain"):
            return name
    raise InputError(f"the toy detector knows no concept {concept!r}; use a shape ({', '.join(data.SHAPES)}), "
                     f"a colour ({', '.join(COLOR_CLASSES)}) or a texture (striped, dotted)")


# ---------------------------------------------------------------------------------------------- training
@dataclass
class DetectorTrainingConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    empty_frac: float = 0.12  # empty backgrounds -> "empty"
    other_frac: float = 0.23  # blobs (70 %) and ellipses (30 %) -> "other"
    lumpy_circle_prob: float = 0.5  # slightly lumpy circles stay "circle"
    texture_prob: float = 0.25
    max_blur: float = 0.6  # mix with a 3x3 box blur, weight U(0, max_blur)
    max_noise: float = 0.15  # Gaussian noise sigma U(0, max_noise)
    seed: int = 3  # weights and data stream
    holdout_seed: int = 99  # held-out evaluation set (never seen in training)
    holdout_size: int = 2000


def detector_batch(n: int, g: torch.Generator, cfg: DetectorTrainingConfig, *, augment: bool = True
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` labelled detector images: shapes, empty backgrounds and reject blobs, with augmentation."""
    n_empty = int(round(n * cfg.empty_frac))
    n_other = int(round(n * cfg.other_frac))
    specs = data.random_specs(n - n_empty - n_other, g, texture_prob=cfg.texture_prob,
                              lumpy_circle_prob=cfg.lumpy_circle_prob)
    specs += data.reject_specs(n_other, g)
    empties = data.random_specs(n_empty, g)
    for s in empties:
        s.shape = "empty"
    specs += empties
    images = data.render(specs)
    shape_label = ["other" if s.shape in data.REJECT_KINDS else s.shape for s in specs]
    labels = {
        "shape": torch.tensor([SHAPE_CLASSES.index(s) for s in shape_label]),
        "color": torch.tensor([COLOR_CLASSES.index(s.color) for s in specs]),
        "background": torch.tensor([BACKGROUND_CLASSES.index(s.background) for s in specs]),
        "texture": torch.tensor([TEXTURE_CLASSES.index(s.texture) for s in specs]),
    }
    # empty images have no colour / texture: those heads are not trained on them (label -100)
    empty = labels["shape"] == SHAPE_CLASSES.index("empty")
    labels["color"][empty] = -100
    labels["texture"][empty] = -100
    if augment:
        blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        w = torch.rand(n, 1, 1, 1, generator=g) * cfg.max_blur
        images = images * (1 - w) + blur * w
        sigma = torch.rand(n, 1, 1, 1, generator=g) * cfg.max_noise
        images = (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)
    perm = torch.randperm(n, generator=g)
    return images[perm], {k: v[perm] for k, v in labels.items()}


@torch.no_grad()
def holdout_accuracy(det: ToyDetector, cfg: DetectorTrainingConfig | None = None) -> dict:
    """Accuracy on ``holdout_size`` clean procedural images drawn with ``holdout_seed`` (never trained on):
    per head, per shape class (recall), and how reject blobs are labelled."""
    cfg = cfg or DetectorTrainingConfig()
    g = torch.Generator().manual_seed(cfg.holdout_seed)
    images, labels = detector_batch(cfg.holdout_size, g, cfg, augment=False)
    det.eval()
    logits = det(images)
    out: dict = {"n": cfg.holdout_size, "seed": cfg.holdout_seed}
    for name in HEADS:
        valid = labels[name] >= 0
        pred = logits[name].argmax(1)
        out[f"{name}_accuracy"] = round(float((pred[valid] == labels[name][valid]).float().mean()), 4)
    pred = logits["shape"].argmax(1)
    out["shape_recall"] = {c: round(float((pred[labels["shape"] == i] == i).float().mean()), 4)
                           for i, c in enumerate(SHAPE_CLASSES) if (labels["shape"] == i).any()}
    other = labels["shape"] == SHAPE_CLASSES.index("other")
    out["other_labelled_circle"] = round(float((pred[other] == 0).float().mean()), 4)
    return out


def train_detector(cfg: DetectorTrainingConfig | None = None, *, callback: ProgressCallback | None = None,
                   log_every: int = 250) -> tuple[ToyDetector, dict]:
    """Train the detector; returns ``(detector in eval mode, facts incl. held-out accuracy)``."""
    cfg = cfg or DetectorTrainingConfig()
    torch.manual_seed(cfg.seed)
    det = ToyDetector()
    opt = torch.optim.Adam(det.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    for step in range(cfg.steps):
        images, labels = detector_batch(cfg.batch_size, g, cfg)
        logits = det(images)
        loss = sum(F.cross_entropy(logits[k], labels[k], ignore_index=-100) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        report(callback, "train detector", step + 1, cfg.steps, loss=loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"detector step {step + 1}/{cfg.steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    det.eval().requires_grad_(False)
    facts = {"config": asdict(cfg), "seconds": round(time.time() - t0, 1), "holdout": holdout_accuracy(det, cfg),
             "params": sum(p.numel() for p in det.parameters())}
    return det, facts


def load_detector(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> ToyDetector:
    """The shipped detector (``weights/detector.safetensors``), float32, eval mode."""
    from ..io import read_tensors
    from .model import WEIGHTS_DIR

    path = Path(path) if path is not None else WEIGHTS_DIR / "detector.safetensors"
    if not path.exists():
        raise InputError(f"toy detector weights {path} are missing; rebuild them with: "
                         "python scripts/train_toy.py --stage detector")
    det = ToyDetector()
    sd, _ = read_tensors(path)
    det.load_state_dict({k: v.float() for k, v in sd.items()})
    return det.to(device).eval().requires_grad_(False)
