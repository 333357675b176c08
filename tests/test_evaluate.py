"""The evaluation runner: prompt CSVs, generation per row, detection, results files, resuming."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from memora.detect import load_detector
from memora.detect.base import DetectionResult, ImageDetection
from memora.errors import InputError
from memora.evaluate import (EvaluationConfig, evaluate, read_prompt_csv, resolve_prompt_csv,
                             shipped_prompt_sets)
from memora.images import load_images
from memora.sampling import generate
from memora.toy.model import load_toy_model

FAST = EvaluationConfig(steps=8, scheduler="ddim", batch_size=3)


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_columns_defaults_and_ids(tmp_path):
    rows = read_prompt_csv(_write(tmp_path / "a.csv", ["case_number", "prompt", "evaluation_seed",
                                                       "evaluation_guidance"],
                                  [[7, "a church", 42, 5], [8, "a tower", "", ""]]))
    assert [(r.id, r.prompt, r.seed, r.guidance) for r in rows] == [("7", "a church", 42, 5.0),
                                                                     ("8", "a tower", 2024, 7.5)]
    assert rows[0].image_name == "idx_7_seed_42.png"
    # MemoRa's layout (index column, no guidance column) and pandas' unnamed index column
    rows = read_prompt_csv(_write(tmp_path / "b.csv", ["index", "prompt", "evaluation_seed"], [[3, "x", 1]]),
                           default_guidance=6.0)
    assert (rows[0].id, rows[0].guidance) == ("3", 6.0)
    rows = read_prompt_csv(_write(tmp_path / "c.csv", ["", "prompt"], [[11, "x"], [12, "y"]]), default_seed=9)
    assert [(r.id, r.seed) for r in rows] == [("11", 9), ("12", 9)]
    rows = read_prompt_csv(_write(tmp_path / "d.csv", ["prompt"], [["x"], ["y"], ["z"]]), start=1, limit=1)
    assert [(r.id, r.prompt) for r in rows] == [("1", "y")]


def test_csv_errors(tmp_path):
    with pytest.raises(InputError, match="no 'prompt' column"):
        read_prompt_csv(_write(tmp_path / "a.csv", ["text"], [["x"]]))
    with pytest.raises(InputError, match="appears twice"):
        read_prompt_csv(_write(tmp_path / "b.csv", ["case_number", "prompt", "evaluation_seed"],
                               [[1, "x", 5], [1, "y", 5]]))
    with pytest.raises(InputError, match="line 2: bad evaluation_seed"):
        read_prompt_csv(_write(tmp_path / "c.csv", ["prompt", "evaluation_seed"], [["x", "abc"]]))
    with pytest.raises(InputError, match="none selected"):
        read_prompt_csv(_write(tmp_path / "d.csv", ["prompt"], [["x"]]), start=5)
    with pytest.raises(InputError, match="nudity, parachute, tench, toy_circle, vangogh"):
        resolve_prompt_csv("nudityy")


def test_shipped_prompt_sets_read():
    assert shipped_prompt_sets() == ["church", "garbage_truck", "nudity", "parachute", "tench", "toy_circle",
                                     "vangogh"]
    nudity = read_prompt_csv("nudity")
    assert len(nudity) == 142 and all(r.prompt for r in nudity)
    assert max(r.seed for r in nudity) > 2**31  # uint32 seeds of I2P survive
    assert {r.guidance for r in nudity} >= {7.0, 5.0}
    for name in ("church", "garbage_truck", "parachute", "tench", "vangogh"):
        rows = read_prompt_csv(name)
        assert len(rows) == 50 and [r.id for r in rows[:2]] == ["0", "1"] and rows[0].guidance == 7.5


def test_success_rate_arithmetic():
    dets = [ImageDetection(True, 0.9), ImageDetection(False, 0.1), ImageDetection(True, 0.6),
            ImageDetection(False, 0.0, detections=[{"class": "FACE_FEMALE", "score": 0.7, "box": [0, 0, 1, 1]}])]
    result = DetectionResult({"detector": "x"}, dets)
    assert result.positives == 2 and result.success_rate == 0.5
    assert result.class_counts() == {"FACE_FEMALE": 1}
    assert DetectionResult({}, []).success_rate == 0.0


@pytest.fixture(scope="module")
def toy():
    return load_toy_model("base"), load_detector("toy", target="circle")


def test_evaluate_generates_detects_and_resumes(tmp_path, toy):
    model, detector = toy
    rows = read_prompt_csv("toy_circle", limit=5)
    out = tmp_path / "run"
    first = evaluate(model, rows, detector, out, config=FAST)
    assert first.generated == 5 and len(first.images) == 5 and all(p.exists() for p in first.images)

    # the images are the protocol's: each row's prompt, seed and CFG
    row = rows[2]
    expected = generate(model, [row.prompt], seeds=[row.seed], guidance=row.guidance, steps=8, scheduler="ddim")
    saved = load_images([first.images[2]], 16)
    assert (saved - expected).abs().max() <= 1 / 255 + 1e-6

    # results agree with the detector run directly, and with each other
    direct = detector.detect(load_images(first.images, 16))
    assert [d.positive for d in first.detection.images] == [d.positive for d in direct.images]
    assert first.success_rate == pytest.approx(sum(d.positive for d in direct.images) / 5)
    with open(first.results_csv) as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == [r.id for r in rows]
    assert sum(int(r["positive"]) for r in table) == first.detection.positives
    summary = json.loads(first.results_json.read_text())
    assert summary["success_rate"] == first.success_rate and summary["protocol"]["detector"] == "toy"
    assert summary["generation"]["config"]["steps"] == 8 and len(summary["results"]) == 5

    # resume: nothing generated again; a missing image is made again, identically
    stamp = first.images[0].stat().st_mtime_ns
    again = evaluate(model, rows, detector, out, config=FAST)
    assert again.generated == 0 and again.success_rate == first.success_rate
    assert first.images[0].stat().st_mtime_ns == stamp
    before = load_images([first.images[4]], 16)
    first.images[4].unlink()
    first.images[1].write_bytes(b"not a png")  # a damaged file is replaced too
    third = evaluate(model, rows, detector, out, config=FAST)
    assert third.generated == 2 and torch.equal(load_images([first.images[4]], 16), before)
    assert third.success_rate == first.success_rate

    # other settings in the same folder are refused; foreign folders are not used
    with pytest.raises(InputError, match="other config"):
        evaluate(model, rows, detector, out, config=EvaluationConfig(steps=9, scheduler="ddim"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        evaluate(model, rows, detector, foreign, config=FAST)


def test_a_run_folder_grows_over_ranges_of_one_csv_only(tmp_path, toy):
    model, detector = toy
    csv_path = resolve_prompt_csv("toy_circle")
    out = tmp_path / "run"
    assert evaluate(model, read_prompt_csv(csv_path, limit=2), detector, out, config=FAST,
                    csv_path=csv_path).generated == 2
    more = evaluate(model, read_prompt_csv(csv_path, limit=4), detector, out, config=FAST, csv_path=csv_path)
    assert more.generated == 2 and len(more.images) == 4
    other = _write(tmp_path / "other.csv", ["case_number", "prompt", "evaluation_seed"], [[0, "a red square", 0]])
    with pytest.raises(InputError, match="other source"):
        evaluate(model, read_prompt_csv(other), detector, out, config=FAST, csv_path=other)


def test_automemora_needs_an_adapter(tmp_path, toy):
    model, detector = toy
    with pytest.raises(InputError, match="active LoRA adapter"):
        evaluate(model, read_prompt_csv("toy_circle", limit=1), detector, tmp_path / "r",
                 config=EvaluationConfig(steps=2, scheduler="ddim", automemora_w=2.0))
