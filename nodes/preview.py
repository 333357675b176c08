"""Small previews drawn with PIL: the live loss curve shown on Train MemoRa LoRA."""

from __future__ import annotations

from typing import Sequence


def loss_curve_image(losses: Sequence[float], total_steps: int, *, width: int = 384, height: int = 192,
                     title: str = "MemoRa LoRA loss"):
    """A PIL image of the loss per optimizer step (raw, light) and its running mean (dark)."""
    import math

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 44, width - 10, 22, height - 24
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    n = len(losses)
    draw.text((left, 4), f"{title}  step {n}/{total_steps}" + (f"  loss {losses[-1]:.4f}" if n else ""),
              fill=(30, 30, 30))
    finite = [v for v in losses if math.isfinite(v)]
    if not finite:
        return img
    lo, hi = min(finite), max(finite)
    losses = [v if math.isfinite(v) else hi for v in losses]  # a nan/inf step (fp16 overflow) is drawn at the top
    if hi - lo < 1e-12:
        lo, hi = lo - 1e-3, hi + 1e-3
    draw.text((2, top - 2), f"{hi:.3g}", fill=(90, 90, 90))
    draw.text((2, bottom - 10), f"{lo:.3g}", fill=(90, 90, 90))
    draw.text((right - 40, bottom + 6), f"{total_steps}", fill=(90, 90, 90))
    span = max(1, total_steps - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return (left + (right - left) * i / span, bottom - (bottom - top) * (v - lo) / (hi - lo))

    if n > 1:
        draw.line([xy(i, v) for i, v in enumerate(losses)], fill=(160, 190, 230), width=1)
        window = max(1, n // 20)
        smooth, acc = [], 0.0
        for i, v in enumerate(losses):
            acc += v
            if i >= window:
                acc -= losses[i - window]
            smooth.append(acc / min(i + 1, window))
        draw.line([xy(i, v) for i, v in enumerate(smooth)], fill=(20, 70, 160), width=2)
    else:
        x, y = xy(0, losses[0])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(20, 70, 160))
    return img
