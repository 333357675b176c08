"""The toy world's procedural data and tokenizer: deterministic, captioned, and drawn as specified."""

from __future__ import annotations

import math

import pytest
import torch

from memora.toy import data
from memora.toy.model import TOKENIZER_DIR, load_tokenizer, tokenizer_files, write_tokenizer


def test_batches_are_deterministic_by_seed():
    a, b, c = data.make_batch(32, 5), data.make_batch(32, 5), data.make_batch(32, 6)
    assert a.images.shape == (32, 3, 16, 16) and a.images.dtype == torch.float32
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0


def test_captions_follow_the_modes():
    spec = data.ShapeSpec("circle", "red", "white")
    assert data.caption(spec, "full") == "a red circle on a white background"
    assert data.caption(spec, "color") == "a red circle"
    assert data.caption(spec, "bg") == "a circle on a white background"
    assert data.caption(spec, "shape") == "a circle"
    assert data.caption(spec, "null") == ""
    striped = data.ShapeSpec("cross", "blue", "gray", texture="striped")
    assert data.caption(striped, "full") == "a striped blue cross on a gray background"


def test_caption_mode_frequencies_and_vocabulary():
    batch = data.make_batch(2000, 3)
    empty = sum(c == "" for c in batch.captions) / 2000
    full = sum(c.endswith("background") and len(c.split()) == 7 for c in batch.captions) / 2000
    assert abs(empty - 0.10) < 0.03 and abs(full - 0.50) < 0.04
    words = {w for c in batch.captions for w in c.split()}
    assert words <= set(data.VOCABULARY)
    # every caption names the drawn shape (or is the dropout caption)
    assert all(c == "" or s.shape in c.split() for c, s in zip(batch.captions, batch.specs))


def test_excluded_shapes_never_appear():
    batch = data.make_batch(500, 2, shapes=[s for s in data.SHAPES if s != "circle"])
    assert not any("circle" in c for c in batch.captions)
    assert {s.shape for s in batch.specs} == {"square", "triangle", "cross"}


def test_shapes_are_drawn_where_and_as_specified():
    spec = dict(color="red", background="white", size=0.3125, cx=0.5, cy=0.5)
    images = data.render([data.ShapeSpec(s, **spec) for s in ("circle", "square", "triangle", "cross", "empty")])
    red = torch.tensor(data.COLORS["red"]).view(3, 1, 1)
    inside = (images - red).abs().amax(1) < 0.02  # pixels fully covered by the shape
    background = (images - data.BACKGROUNDS["white"]).abs().amax(1) < 0.02
    assert background[:, 0, 0].all() and background[4].all()  # corners, and the empty image
    coverage = [(1 - background[i].float()).sum().item() for i in range(4)]
    s = 0.3125 * 16
    assert abs(coverage[0] - math.pi * s * s) < 0.2 * math.pi * s * s  # circle area ~ pi s^2 (plus AA edge)
    assert inside[0, 8, 8] and inside[1, 8, 8] and inside[3, 8, 8]
    assert not inside[3, 4, 4] and inside[1, 5, 5]  # a cross has empty corners, a square does not
    assert len({round(c) for c in coverage}) == 4  # four different silhouettes


def test_textures_change_only_the_shape():
    plain = data.render([data.ShapeSpec("square", "green", "black")])
    for texture in ("striped", "dotted"):
        textured = data.render([data.ShapeSpec("square", "green", "black", texture=texture)])
        changed = (textured - plain).abs().amax(1)[0] > 0.05
        assert changed.sum() > 10
        assert not changed[0, :].any() and not changed[:, 0].any()  # background untouched


def test_concept_images_and_eval_prompts():
    few = data.concept_images("circle", 4, 10000)
    assert few.images.shape == (4, 3, 16, 16)
    assert sorted(s.color for s in few.specs) == sorted(data.COLORS)  # colours cycle through all four
    assert all(c.startswith("a ") and " circle on a " in c for c in few.captions)
    assert data.eval_prompts("square", 5, 1) == data.eval_prompts("square", 5, 1)
    assert all(" square on a " in p for p in data.eval_prompts("square", 5, 1))


def test_reject_drawings_are_not_shapes():
    specs = data.reject_specs(50, torch.Generator().manual_seed(0))
    assert {s.shape for s in specs} == {"blob", "ellipse"}
    assert all(max(s.lumpy) >= 0.15 for s in specs if s.shape == "blob")
    assert data.render(specs).shape == (50, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown shape"):
        data.render([data.ShapeSpec("hexagon", "red", "white")])


def test_tokenizer_has_one_token_per_word_and_ships_as_generated(tmp_path):
    tok = load_tokenizer()
    for word in data.VOCABULARY:
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, ids)  # <|startoftext|> word <|endoftext|>
    assert tok.model_max_length == 16
    ids = tok("a red circle on a white background", padding="max_length", max_length=16).input_ids
    assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[8] == tok.eos_token_id
    write_tokenizer(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes()
    vocab, merges = tokenizer_files()
    assert len(vocab) == len(tok) and all(isinstance(m, tuple) for m in merges)
