"""The toy backend through the common detector interface, on procedural images with known answers."""

from __future__ import annotations

import pytest
import torch

from memora.detect import load_detector
from memora.errors import InputError
from memora.toy import data


def test_toy_detector_finds_its_concept_and_not_others():
    circles = data.concept_images("circle", 24, seed=7).images
    squares = data.concept_images("square", 24, seed=8).images
    detector = load_detector("toy", target="circle")
    on_circles = detector.detect(circles)
    on_squares = detector.detect(squares)
    assert on_circles.success_rate >= 0.9 and on_squares.success_rate <= 0.1
    assert on_circles.images[0].label in data.SHAPES + ("empty", "other")
    assert sum(on_circles.images[0].scores.values()) == pytest.approx(1.0, abs=1e-4)
    # larger images of any mode go through the same path (resized to 16 px by the detector)
    big = torch.nn.functional.interpolate(circles[:4], size=64, mode="nearest")
    assert [d.positive for d in detector.detect(big).images] == [d.positive for d in on_circles.images[:4]]
    proto = on_circles.protocol
    assert proto["detector"] == "toy" and proto["head"] == "shape" and len(proto["model_sha256"]) == 64


def test_toy_detector_rejects_unknown_concepts():
    with pytest.raises(InputError, match="knows no concept"):
        load_detector("toy", target="hexagon")
    with pytest.raises(InputError, match="unknown detector"):
        load_detector("yolo")
