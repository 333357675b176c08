"""Reading user images and preparing them for the engine: any mode and size in, ``[B, 3, S, S]`` 0..1 out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_image_files(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from a folder (sorted by name, not recursive), a single file, or a list of files/folders."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            files.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p} is not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
            files.append(p)
        else:
            raise InputError(f"image path not found: {p}")
    return files


def to_rgb(image):
    """PIL image in any mode -> RGB. Transparent pixels are composited on white, grayscale is replicated."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image, resolution: int, *, center_crop: bool = True):
    """Resize the shorter side to ``resolution`` (Lanczos, as the reference's training script) and crop the
    centre to a square (``center_crop=False``: a plain resize to ``resolution`` x ``resolution``)."""
    from PIL import Image

    w, h = image.size
    if not center_crop:
        return image.resize((resolution, resolution), Image.LANCZOS)
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def pil_to_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB images of one size -> ``[B, 3, H, W]`` float32 in 0..1."""
    import numpy as np

    arrays = [np.asarray(to_rgb(im), dtype=np.float32) / 255.0 for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"images have different sizes {sorted(sizes)}; resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list:
    """``[B, 3, H, W]`` in 0..1 -> list of PIL RGB images."""
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def load_images(sources, resolution: int, *, center_crop: bool = True, multiple_of: int = 8) -> torch.Tensor:
    """Read image files (any mode, any size) -> ``[B, 3, resolution, resolution]`` float32 in 0..1."""
    from PIL import Image, UnidentifiedImageError

    if resolution % multiple_of:
        raise InputError(f"resolution {resolution} is not a multiple of {multiple_of}")
    out = []
    for f in list_image_files(sources):
        try:
            with Image.open(f) as im:
                im.load()
                out.append(resize_center_crop(to_rgb(im), resolution, center_crop=center_crop))
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"cannot read image {f}: {e}") from e
    return pil_to_tensor(out)


def prepare_tensor_images(images: torch.Tensor, resolution: int, *, center_crop: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` (C = 1, 3 or 4) in 0..1 of any size -> ``[B, 3, resolution, resolution]``.

    Used for images that arrive as tensors (ComfyUI IMAGE batches): alpha is composited on white, grayscale is
    replicated, then the same resize + centre crop as for files (antialiased bicubic in torch).
    """
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise InputError(f"expected images [B, C, H, W] with C in (1, 3, 4), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InputError("no images given")
    x = images.float()
    if x.shape[1] == 4:
        rgb, alpha = x[:, :3], x[:, 3:4]
        x = rgb * alpha + (1 - alpha)
    elif x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) == (resolution, resolution):
        return x.clamp(0, 1).contiguous()
    if not center_crop:
        return F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True,
                             align_corners=False).clamp(0, 1)
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return x[:, :, top:top + resolution, left:left + resolution].clamp(0, 1).contiguous()


def blur_images(images: torch.Tensor, mask: Sequence[bool], *, cells: int = 16) -> torch.Tensor:
    """A copy of ``images [B, 3, H, W]`` (0..1) in which the images where ``mask`` is true are censored: a strong
    Gaussian blur, then a mosaic of ``cells`` blocks along the longer side, so nothing explicit is left."""
    from PIL import Image, ImageFilter

    if len(mask) != images.shape[0]:
        raise InputError(f"{images.shape[0]} images but {len(mask)} mask values")
    out = images.detach().clone()
    for i, pil in enumerate(tensor_to_pil(images)):
        if not mask[i]:
            continue
        w, h = pil.size
        blurred = pil.filter(ImageFilter.GaussianBlur(radius=max(2.0, max(w, h) / (2 * cells))))
        scale = cells / max(w, h)
        small = blurred.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        out[i] = pil_to_tensor([small.resize((w, h), Image.NEAREST)])[0].to(out.device, out.dtype)
    return out
