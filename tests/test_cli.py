"""The ``memora`` command line and the end-to-end recovery on a tiny SD1-layout model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tiny_models import make_tiny_model
from memora.cli import main
from memora.images import tensor_to_pil
from memora.io import save_safetensors

RECOVER_FLAGS = ["--steps", "6", "--start-step", "2", "--interp", "2", "--lora-steps", "3", "--grad-accum", "1",
                 "--resolution", "64", "--device", "cpu", "--dtype", "fp32", "-q"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny CompVis single-file base, an "unlearned" diffusers UNet and four concept images on disk."""
    from memora.loading import model_to_compvis

    root = tmp_path_factory.mktemp("cli")
    base = make_tiny_model(0)
    save_safetensors(model_to_compvis(base), root / "base.safetensors")
    unlearned = make_tiny_model(1)
    save_safetensors(unlearned.unet.state_dict(), root / "unlearned_unet.safetensors")
    images = root / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(3)
    for i, pil in enumerate(tensor_to_pil(torch.rand(4, 3, 72, 96, generator=g))):  # not square, not 64
        pil.save(images / f"img{i}.png")
    return root


def test_recover_writes_lora_training_set_and_summary(files, tmp_path):
    out = tmp_path / "run"
    code = main(["recover", "--base", str(files / "base.safetensors"), "--unlearned",
                 str(files / "unlearned_unet.safetensors"), "--images", str(files / "images"),
                 "--prompt", "a photo of the parachute", "--out", str(out), "--method", "ESD", *RECOVER_FLAGS])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # 4 images -> 2 consecutive pairs x (2 + 1) weights
    assert summary["n_source_images"] == 4
    assert summary["n_training_images"] == 6
    assert len(list((out / "training").glob("*.png"))) == 6
    assert (out / "training" / "1_interval0.50.png").exists()
    assert summary["lora_steps_done"] == 3
    assert summary["final_loss"] > 0
    assert set(summary["timings_seconds"]) >= {"encode", "invert", "regenerate", "train", "total"}
    assert summary["model"]["method"] == "ESD"
    assert summary["model"]["unlearned"] == [str(files / "unlearned_unet.safetensors")]
    assert summary["config"]["inversion"]["start_step"] == 2
    with safe_open(str(out / "memora_lora.safetensors"), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert "a photo of the parachute" in json.dumps(meta)


def test_recover_refuses_non_empty_output_dir(files, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["recover", "--base", str(files / "base.safetensors"), "--images", str(files / "images"),
                 "--prompt", "a photo of the parachute", "--out", str(out), *RECOVER_FLAGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("case, expected", [
    ("one_image", "at least 2"),
    ("missing_images", "not found"),
    ("long_prompt", "77"),
    ("bad_start_step", "start"),
])
def test_recover_bad_input_is_one_line_exit_2(files, tmp_path, capsys, case, expected):
    images = [str(files / "images")]
    prompt = "a photo of the parachute"
    flags = list(RECOVER_FLAGS)
    if case == "one_image":
        images = [str(files / "images" / "img0.png")]
    elif case == "missing_images":
        images = [str(tmp_path / "nope")]
    elif case == "long_prompt":
        prompt = "a very long prompt " * 30
    elif case == "bad_start_step":
        flags[flags.index("--start-step") + 1] = "99"
    code = main(["recover", "--base", str(files / "base.safetensors"), "--images", *images, "--prompt", prompt,
                 "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err
    assert len(err.splitlines()) == 1


def test_inspect_prints_json_report(files, capsys):
    assert main(["inspect", str(files / "unlearned_unet.safetensors"), "--base", str(files / "base.safetensors")]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "unet" in text and "diffusers" in text


def test_inspect_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "memora.cli", "--version"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.startswith("memora ")
