"""Procedural, captioned images of the toy world: coloured shapes on plain backgrounds, deterministic by seed.

Every image is rendered in torch from a few numbers (shape, colour, background, texture, size, position), so no
files are needed and the same seed always gives the same batch. Images are ``[B, 3, S, S]`` float32 in 0..1
(the engine's image convention); the default size is 16 px.

Geometry (pixel units, ``S`` = image size, ``y`` points down): size ``s ~ U(0.25 S, 0.375 S)``, centre
``S/2 + U(-0.09 S, 0.09 S)``; masks are evaluated on a 4x supersampled grid and averaged (anti-aliasing).

- circle: ``dx^2 + dy^2 <= s^2``
- square: ``max(|dx|, |dy|) <= 0.85 s``
- triangle: ``-s <= dy <= 0.6 s`` and ``|dx| <= 0.6 (dy + s)``
- cross: ``(|dx| <= 0.33 s and |dy| <= s)`` or ``(|dy| <= 0.33 s and |dx| <= s)``

Two "reject" kinds exist only to train the detector: ``blob`` (a radial Fourier shape) and ``ellipse``; a circle
can also be drawn slightly ``lumpy`` and stays a circle.

Textures (the room left for a *style* concept): ``plain`` (default), ``striped`` (diagonal stripes) and
``dotted``. The shipped toy model is trained on plain shapes only (``texture_prob=0``); the captions, the
vocabulary and the detector's texture head already support the others.

Captions mirror SD prompts: ``"a red circle on a white background"`` (full), ``"a red circle"`` (colour),
``"a circle on a white background"`` (background), ``"a circle"`` (shape) and ``""`` (caption dropout, which
classifier-free guidance needs). A texture word goes before the colour: ``"a striped red circle ..."``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
}
BACKGROUNDS: dict[str, float] = {"black": 0.05, "white": 0.95, "gray": 0.50}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
REJECT_KINDS: tuple[str, ...] = ("blob", "ellipse")  # detector-only "not a shape" drawings

CAPTION_MODES: tuple[str, ...] = ("full", "color", "bg", "shape", "null")
DEFAULT_CAPTION_PROBS: dict[str, float] = {"full": 0.5, "color": 0.15, "bg": 0.15, "shape": 0.10, "null": 0.10}

#: every word a toy caption can contain (the tokenizer has one token per word)
VOCABULARY: tuple[str, ...] = ("a", "on", "background", *SHAPES, *COLORS, *BACKGROUNDS, "striped", "dotted")

SUPERSAMPLE = 4


@dataclass
class ShapeSpec:
    """One toy image. ``shape`` is one of ``SHAPES`` (or ``REJECT_KINDS`` / ``"empty"`` for detector data)."""

    shape: str
    color: str
    background: str
    texture: str = "plain"
    size: float = 0.3125  # radius-like size as a fraction of the image side
    cx: float = 0.5  # centre, fractions of the image side
    cy: float = 0.5
    lumpy: tuple[float, ...] = ()  # Fourier amplitudes a_2..a_5 (blob / lumpy circle), 0 = none
    phases: tuple[float, ...] = ()
    angle: float = 0.0  # ellipse rotation (radians)
    aspect: float = 1.0  # ellipse aspect ratio


@dataclass
class Batch:
    """Images ``[B, 3, S, S]`` in 0..1, their captions and the specs they were drawn from."""

    images: torch.Tensor
    captions: list[str]
    specs: list[ShapeSpec] = field(default_factory=list)


def caption(spec: ShapeSpec, mode: str = "full") -> str:
    """The caption of ``spec`` in one of ``CAPTION_MODES`` (``"null"`` gives ``""``)."""
    if mode == "null":
        return ""
    words = ["a"]
    if spec.texture != "plain":
        words.append(spec.texture)
    if mode in ("full", "color"):
        words.append(spec.color)
    words.append(spec.shape)
    if mode in ("full", "bg"):
        words += ["on", "a", spec.background, "background"]
    if mode not in CAPTION_MODES:
        raise ValueError(f"unknown caption mode {mode!r}; use one of {CAPTION_MODES}")
    return " ".join(words)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _choice(g: torch.Generator, n: int, options: Sequence[str], weights: Sequence[float] | None = None) -> list[str]:
    if weights is None:
        idx = torch.randint(len(options), (n,), generator=g)
    else:
        idx = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=g)
    return [options[int(i)] for i in idx]


def random_specs(n: int, generator: torch.Generator, *, shapes: Sequence[str] = SHAPES,
                 colors: Sequence[str] = tuple(COLORS), backgrounds: Sequence[str] = tuple(BACKGROUNDS),
                 texture_prob: float = 0.0, textures: Sequence[str] = ("striped", "dotted"),
                 lumpy_circle_prob: float = 0.0) -> list[ShapeSpec]:
    """``n`` random shape specs (uniform over the given shapes, colours and backgrounds)."""
    g = generator
    shape_l = _choice(g, n, list(shapes))
    color_l = _choice(g, n, list(colors))
    bg_l = _choice(g, n, list(backgrounds))
    size = _uniform(g, n, 0.25, 0.375)
    cx = 0.5 + _uniform(g, n, -0.09, 0.09)
    cy = 0.5 + _uniform(g, n, -0.09, 0.09)
    textured = torch.rand(n, generator=g, dtype=torch.float64) < texture_prob
    texture_l = _choice(g, n, list(textures))
    lumpy_roll = torch.rand(n, generator=g, dtype=torch.float64) < lumpy_circle_prob
    amps = _uniform(g, 4 * n, 0.0, 0.06).reshape(n, 4) * (torch.rand(n, 4, generator=g, dtype=torch.float64) < 0.7)
    phases = _uniform(g, 4 * n, 0.0, 2 * math.pi).reshape(n, 4)
    specs = []
    for i in range(n):
        lumpy = tuple(amps[i].tolist()) if (shape_l[i] == "circle" and bool(lumpy_roll[i])) else ()
        specs.append(ShapeSpec(shape_l[i], color_l[i], bg_l[i], texture_l[i] if bool(textured[i]) else "plain",
                               float(size[i]), float(cx[i]), float(cy[i]), lumpy,
                               tuple(phases[i].tolist()) if lumpy else ()))
    return specs


def reject_specs(n: int, generator: torch.Generator, *, ellipse_prob: float = 0.3) -> list[ShapeSpec]:
    """``n`` shapeless drawings for the detector's ``other`` class: Fourier blobs (70 %) and ellipses (30 %)."""
    g = generator
    base = random_specs(n, g)
    is_ellipse = torch.rand(n, generator=g, dtype=torch.float64) < ellipse_prob
    amps = _uniform(g, 4 * n, 0.15, 0.30).reshape(n, 4) * (torch.rand(n, 4, generator=g, dtype=torch.float64) < 0.6)
    # at least one active mode, so a blob is never a circle
    first = torch.randint(4, (n,), generator=g)
    amps[torch.arange(n), first] = amps[torch.arange(n), first].clamp_min(0.15)
    phases = _uniform(g, 4 * n, 0.0, 2 * math.pi).reshape(n, 4)
    angle = _uniform(g, n, 0.0, math.pi)
    aspect = _uniform(g, n, 1.6, 2.2)
    out = []
    for i, b in enumerate(base):
        if bool(is_ellipse[i]):
            out.append(ShapeSpec("ellipse", b.color, b.background, "plain", b.size, b.cx, b.cy,
                                 angle=float(angle[i]), aspect=float(aspect[i])))
        else:
            out.append(ShapeSpec("blob", b.color, b.background, "plain", b.size, b.cx, b.cy,
                                 lumpy=tuple(amps[i].tolist()), phases=tuple(phases[i].tolist())))
    return out


def _masks(specs: Sequence[ShapeSpec], xx: torch.Tensor, yy: torch.Tensor, side: int) -> torch.Tensor:
    """Coverage masks ``[B, n, n]`` (float 0/1) on the supersampled grid ``xx, yy`` (pixel units)."""
    b = len(specs)

    def col(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(b, 1, 1)

    kinds = [s.shape for s in specs]
    unknown = set(kinds) - set(SHAPES + REJECT_KINDS + ("empty",))
    if unknown:
        raise ValueError(f"unknown shape {sorted(unknown)[0]!r}; use one of {SHAPES + REJECT_KINDS + ('empty',)}")
    s = col([sp.size * side for sp in specs])
    dx, dy = xx - col([sp.cx * side for sp in specs]), yy - col([sp.cy * side for sp in specs])
    ax, ay = dx.abs(), dy.abs()
    # radial (circle / lumpy circle / blob): r(theta) = s (1 + sum_k a_k cos(k theta + phi_k)), k = 2..5
    theta = torch.atan2(dy, dx)
    radius = torch.ones_like(theta)
    amps = torch.zeros(b, 4)
    phases = torch.zeros(b, 4)
    for i, sp in enumerate(specs):
        amps[i, : len(sp.lumpy)] = torch.tensor(sp.lumpy, dtype=torch.float32)
        phases[i, : len(sp.phases)] = torch.tensor(sp.phases, dtype=torch.float32)
    for k in range(4):
        radius = radius + amps[:, k].view(b, 1, 1) * torch.cos((k + 2) * theta + phases[:, k].view(b, 1, 1))
    radial = dx ** 2 + dy ** 2 <= (s * radius) ** 2
    # ellipse: rotated, same area as the circle of radius s
    ang, asp = col([sp.angle for sp in specs]), col([sp.aspect for sp in specs])
    u, v = torch.cos(ang) * dx + torch.sin(ang) * dy, -torch.sin(ang) * dx + torch.cos(ang) * dy
    ellipse = (u / (s * asp.sqrt())) ** 2 + (v / (s / asp.sqrt())) ** 2 <= 1.0
    masks = {
        "circle": radial,
        "blob": radial,
        "square": torch.maximum(ax, ay) <= 0.85 * s,
        "triangle": (dy >= -s) & (dy <= 0.6 * s) & (ax <= 0.6 * (dy + s)),
        "cross": ((ax <= 0.33 * s) & (ay <= s)) | ((ay <= 0.33 * s) & (ax <= s)),
        "ellipse": ellipse,
        "empty": torch.zeros_like(radial),
    }
    out = torch.zeros(b, *xx.shape)
    for kind, m in masks.items():
        sel = torch.tensor([k == kind for k in kinds])
        if sel.any():
            out[sel] = m[sel].float()
    return out


def _textures(specs: Sequence[ShapeSpec], xx: torch.Tensor, yy: torch.Tensor, side: int) -> torch.Tensor:
    """Fraction ``[B, n, n]`` of the foreground colour at each point (1 = full colour, 0.3 = darkened)."""
    period = max(3.0, side / 5)
    stripes = torch.where(torch.remainder(xx + yy, period) < period / 2, 1.0, 0.3)
    rx, ry = torch.remainder(xx, period) - period / 2, torch.remainder(yy, period) - period / 2
    dots = torch.where(rx ** 2 + ry ** 2 > (period / 3.2) ** 2, 1.0, 0.3)
    table = {"plain": torch.ones_like(xx), "striped": stripes, "dotted": dots}
    for sp in specs:
        if sp.texture not in table:
            raise ValueError(f"unknown texture {sp.texture!r}; use one of {TEXTURES}")
    return torch.stack([table[sp.texture] for sp in specs])


def render(specs: Sequence[ShapeSpec], size: int = 16) -> torch.Tensor:
    """Render specs to images ``[B, 3, size, size]`` float32 in 0..1 (anti-aliased, 4x supersampled)."""
    if not specs:
        return torch.zeros(0, 3, size, size)
    n = size * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    inside = _masks(specs, xx, yy, size)[:, None]  # [B, 1, n, n]
    shade = _textures(specs, xx, yy, size)[:, None]
    fg = torch.tensor([COLORS[sp.color] for sp in specs]).view(-1, 3, 1, 1)
    bg = torch.tensor([BACKGROUNDS[sp.background] for sp in specs]).view(-1, 1, 1, 1).expand(-1, 3, 1, 1)
    # a texture darkens parts of the shape's colour (towards black, not towards the background)
    img = bg * (1 - inside) + fg * inside * shade
    return torch.nn.functional.avg_pool2d(img, SUPERSAMPLE).clamp(0, 1)


def sample_captions(specs: Sequence[ShapeSpec], generator: torch.Generator,
                    probs: dict[str, float] | None = None) -> list[str]:
    """One caption per spec, its mode drawn from ``probs`` (default: ``DEFAULT_CAPTION_PROBS``)."""
    probs = probs or DEFAULT_CAPTION_PROBS
    modes = _choice(generator, len(specs), list(probs), list(probs.values()))
    return [caption(s, m) for s, m in zip(specs, modes)]


def make_batch(n: int, seed: int | torch.Generator, *, size: int = 16, shapes: Sequence[str] = SHAPES,
               caption_probs: dict[str, float] | None = None, texture_prob: float = 0.0) -> Batch:
    """A deterministic batch of ``n`` captioned images (the diffusion model's training data)."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    specs = random_specs(n, g, shapes=shapes, texture_prob=texture_prob)
    return Batch(render(specs, size), sample_captions(specs, g, caption_probs), specs)


def concept_images(shape: str, n: int, seed: int, *, size: int = 16, permute_colors: bool = True) -> Batch:
    """``n`` images of one shape with full captions (the few "concept images" a recovery starts from).

    With ``permute_colors`` the colours cycle through every colour before repeating (varied few-shot sets).
    """
    g = torch.Generator().manual_seed(int(seed))
    specs = random_specs(n, g, shapes=[shape])
    if permute_colors:
        order = [list(COLORS)[int(i)] for i in torch.randperm(len(COLORS), generator=g)]
        for i, s in enumerate(specs):
            s.color = order[i % len(order)]
    return Batch(render(specs, size), [caption(s, "full") for s in specs], specs)


def eval_prompts(shape: str, n: int, seed: int, *, mode: str = "full") -> list[str]:
    """``n`` prompts for ``shape`` with colours/backgrounds drawn with ``seed`` (the evaluation protocol)."""
    g = torch.Generator().manual_seed(int(seed))
    specs = random_specs(n, g, shapes=[shape])
    return [caption(s, mode) for s in specs]
