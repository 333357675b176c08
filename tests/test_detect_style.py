"""The style backend on a tiny randomly initialised ViT classifier folder made here (plumbing: labels, top-k)."""

from __future__ import annotations

import json

import pytest
import torch

from memora.detect import load_detector
from memora.detect.style import StyleDetector
from memora.errors import InputError, WeightFormatError

ARTISTS = ["vincent-van-gogh", "claude-monet", "pablo-picasso"] + [f"artist-{i:03d}" for i in range(126)]


@pytest.fixture(scope="module")
def style_folder(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("style") / "wikiart-vit"
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=len(ARTISTS),
                       id2label=dict(enumerate(ARTISTS)), label2id={a: i for i, a in enumerate(ARTISTS)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(5)
    return torch.rand(6, 3, 48, 40, generator=g)


def _reference_probs(folder, images) -> torch.Tensor:
    """Probabilities straight from transformers, for comparison."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    arrays = [(x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for x in images]
    with torch.no_grad():
        return model(**processor(images=arrays, return_tensors="pt")).logits.softmax(-1)


def test_labels_resolve_loosely_and_unknown_ones_list_close_matches(style_folder):
    det = StyleDetector(style_folder, "Vincent Van Gogh")
    assert det.target == "vincent-van-gogh" and det.target_id == 0
    assert StyleDetector(style_folder, "claude_monet").target_id == 1
    with pytest.raises(InputError, match="vincent-van-gogh"):
        StyleDetector(style_folder, "vincent-van-gog")


def test_top_k_rule_matches_the_classifier_ranking(style_folder, images):
    probs = _reference_probs(style_folder, images)
    ranks = probs[0].argsort(descending=True)
    first, third = ARTISTS[int(ranks[0])], ARTISTS[int(ranks[2])]
    at1 = StyleDetector(style_folder, first, top_k=1).detect(images[:1]).images[0]
    assert at1.positive and at1.label == first
    assert at1.score == pytest.approx(float(probs[0, ranks[0]]), abs=1e-5)
    assert not StyleDetector(style_folder, third, top_k=1).detect(images[:1]).images[0].positive
    assert not StyleDetector(style_folder, third, top_k=2).detect(images[:1]).images[0].positive
    assert StyleDetector(style_folder, third, top_k=3).detect(images[:1]).images[0].positive

    result = StyleDetector(style_folder, first, top_k=3).detect(images)
    expected = [ARTISTS.index(first) in p.argsort(descending=True)[:3].tolist() for p in probs]
    assert [d.positive for d in result.images] == expected
    assert result.success_rate == pytest.approx(sum(expected) / len(expected))
    proto = result.protocol
    assert proto["detector"] == "style" and proto["top_k"] == 3 and proto["classes"] == len(ARTISTS)
    assert len(proto["model_sha256"]) == 64
    json.dumps(result.to_dict())  # JSON-able


def test_bad_folders_are_refused_with_reasons(tmp_path, style_folder):
    with pytest.raises(InputError, match="needs the classifier folder"):
        load_detector("style")
    with pytest.raises(InputError, match="not a folder"):
        StyleDetector(tmp_path / "missing")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((style_folder / "config.json").read_text())
    with pytest.raises(WeightFormatError, match="preprocessor_config.json"):
        StyleDetector(incomplete)
    with pytest.raises(InputError, match="top_k"):
        StyleDetector(style_folder, top_k=0)
    with pytest.raises(InputError, match="takes no threshold"):
        load_detector("style", model_file=style_folder, threshold=0.5)
