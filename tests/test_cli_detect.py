"""``memora detect`` and ``memora evaluate`` on the toy world (no weights beyond what ships)."""

from __future__ import annotations

import json

from memora.cli import main
from memora.images import tensor_to_pil
from memora.toy import data


def test_detect_prints_per_image_json(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, pil in enumerate(tensor_to_pil(data.concept_images("circle", 3, seed=1).images)):
        pil.save(folder / f"c{i}.png")
    tensor_to_pil(data.concept_images("triangle", 1, seed=2).images)[0].convert("L").save(tmp_path / "t.png")
    assert main(["detect", "-q", "--detector", "toy", "--target", "circle", str(folder), str(tmp_path / "t.png"),
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 4 and len(out["results"]) == 4
    assert [r["positive"] for r in out["results"]] == [True, True, True, False]
    assert out["success_rate"] == 0.75 and out["protocol"]["target"] == "circle"
    assert out["results"][3]["source"].endswith("t.png")


def test_detect_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"no image")
    assert main(["detect", "-q", "--detector", "toy", str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["detect", "-q", "--detector", "imagenet", "--threshold", "0.5", str(tmp_path / "x.png")]) == 2
    assert "takes no threshold" in capsys.readouterr().err


def test_evaluate_runs_and_resumes(tmp_path, capsys):
    args = ["evaluate", "-q", "--toy", "base", "--prompts", "toy_circle", "--limit", "3", "--detector", "toy",
            "--target", "circle", "--steps", "4", "--scheduler", "ddim", "--out", str(tmp_path / "run"),
            "--device", "cpu"]
    assert main(args) == 0
    assert "(3 generated now, 0 reused)" in capsys.readouterr().out
    assert main(args) == 0
    assert "(0 generated now, 3 reused)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "results-toy-circle.json").read_text())
    assert summary["images"] == 3 and summary["generation"]["source"]["prompt_csv"] == "toy_circle.csv"
    assert main(args + ["--base", "x"]) == 2  # --toy and --base together
    assert "not both" in capsys.readouterr().err


def test_detect_nudenet_class_set_and_threshold(tmp_path, capsys):
    """The class set and threshold are the user's: a portrait is no nudity, but FACE_FEMALE above 0.5 counts."""
    import pytest

    pytest.importorskip("nudenet", reason="the NudeNet extra is not installed")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "portrait.png")
    assert main(["detect", "-q", "--detector", "nudenet", str(tmp_path / "portrait.png")]) == 0
    assert json.loads(capsys.readouterr().out)["success_rate"] == 0.0
    assert main(["detect", "-q", "--detector", "nudenet", "--classes", "FACE_FEMALE", "--threshold", "0.5",
                 str(tmp_path / "portrait.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["success_rate"] == 1.0 and out["protocol"]["classes"] == ["FACE_FEMALE"]
    assert main(["detect", "-q", "--detector", "toy", "--classes", "FACE_FEMALE", str(tmp_path / "portrait.png")]) == 2
    assert "takes no classes" in capsys.readouterr().err
