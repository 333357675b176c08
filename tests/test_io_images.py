"""Safe writing (atomic, never overwriting) and reading user images of any mode and size."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from PIL import Image

from memora.errors import InputError
from memora.images import list_image_files, load_images, prepare_tensor_images
from memora.io import atomic_path, next_free_path, save_json, save_safetensors


def test_atomic_write_refuses_overwrite_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.safetensors"
    save_safetensors({"w": torch.ones(2)}, target)
    with pytest.raises(FileExistsError, match="already exists"):
        save_safetensors({"w": torch.zeros(2)}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    save_safetensors({"w": torch.zeros(2)}, target, overwrite=True)
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & stat.S_IRGRP  # not the 0600 of a temporary file


def test_next_free_path_never_returns_an_existing_file(tmp_path):
    first = next_free_path(tmp_path, "lora", ".safetensors")
    assert first.name == "lora.safetensors"
    save_json({}, first)
    second = next_free_path(tmp_path, "lora", ".safetensors")
    assert second.name == "lora_00001.safetensors" and not second.exists()


def test_load_images_any_mode_and_size(tmp_path):
    Image.new("RGBA", (50, 30), (255, 0, 0, 0)).save(tmp_path / "a_transparent.png")  # fully transparent -> white
    Image.new("L", (20, 40), 128).save(tmp_path / "b_gray.png")
    Image.new("P", (33, 33)).save(tmp_path / "c_palette.png")
    Image.new("RGB", (65, 65), (0, 0, 255)).save(tmp_path / "d_rgb.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    images = load_images(tmp_path, 32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert torch.allclose(images[0], torch.ones(3, 32, 32))
    assert torch.allclose(images[1], torch.full((3, 32, 32), 128 / 255), atol=1e-6)
    assert images[3, 2].mean() > 0.9 and images[3, 0].mean() < 0.1


def test_image_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list_image_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        list_image_files(empty)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not an image"):
        list_image_files(tmp_path / "x.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="cannot read"):
        load_images(tmp_path / "broken.png", 32)
    with pytest.raises(InputError, match="multiple of 8"):
        load_images(tmp_path / "broken.png", 30)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_prepare_tensor_images_crops_centre(channels):
    x = torch.zeros(2, channels, 40, 80)
    x[..., :, 20:60] = 1.0  # the centre square of a wide image is white
    if channels == 4:
        x[:, 3] = 1.0  # opaque
    out = prepare_tensor_images(x, 16)
    assert out.shape == (2, 3, 16, 16)
    assert out[..., 2:-2].min() > 0.95  # the white centre; the outer columns blend with the resize kernel
    with pytest.raises(InputError):
        prepare_tensor_images(torch.zeros(0, 3, 8, 8), 8)


def test_blur_images_censors_only_the_masked_images():
    from memora.images import blur_images

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 96, 64, generator=g)
    out = blur_images(images, [True, False, True])
    assert out.shape == images.shape and torch.equal(out[1], images[1])
    assert not torch.equal(images[0], out[0])
    # a 16-cell mosaic: at most 16 x 11 distinct colours are left in a censored image
    assert len(torch.unique(out[0].reshape(3, -1), dim=1).T) <= 16 * 11
    assert torch.equal(blur_images(images, [False] * 3), images)
    with pytest.raises(InputError):
        blur_images(images, [True])
