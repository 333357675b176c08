"""Slerp and the pair/weight schedules (memora.interpolation)."""

from __future__ import annotations

import math

import pytest
import torch

from memora.errors import InputError
from memora.interpolation import (expected_count, interpolate, interpolate_inverted, interpolation_weights,
                                  pair_indices, slerp)
from memora.inversion import InvertedLatents


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _reference_slerp(z1, z2, t):
    """gmum/MemoRa ``src/utils/latent_iversion.py::slerp``, transcribed (no guards)."""
    z1_flat = z1.reshape(1, -1)
    z2_flat = z2.reshape(1, -1)
    z1_norm = z1_flat / z1_flat.norm(dim=1, keepdim=True)
    z2_norm = z2_flat / z2_flat.norm(dim=1, keepdim=True)
    omega = torch.acos((z1_norm * z2_norm).sum(dim=1))
    so = torch.sin(omega)
    res = (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * z1_flat + (
        torch.sin(t * omega) / so).unsqueeze(1) * z2_flat
    return res.view_as(z1)


def _angle(x, y):
    x, y = x.double().flatten(), y.double().flatten()
    return math.acos(max(-1.0, min(1.0, float(x @ y / (x.norm() * y.norm())))))


# ----------------------------------------------------------------------------------------------- slerp
def test_matches_reference_formula_on_unnormalised_latents():
    a, b = _randn(4, 8, 8, seed=0, dtype=torch.float64), 2.5 * _randn(4, 8, 8, seed=1, dtype=torch.float64)
    for t in (0.1, 0.37, 0.5, 0.9):
        assert (slerp(a, b, t) - _reference_slerp(a, b, t)).abs().max().item() < 1e-12
    # the reference is also the norm-changing formula on unequal norms: not a lerp, not a normalised slerp
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() - (a + b).norm() / 2) > 0.5


def test_endpoints_are_bit_exact_in_the_input_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        a, b = _randn(4, 8, 8, seed=2, dtype=dtype), _randn(4, 8, 8, seed=3, dtype=dtype)
        out = slerp(a, b, torch.tensor([0.0, 0.25, 1.0]))
        assert out.shape == (3, 4, 8, 8) and out.dtype == dtype
        assert torch.equal(out[0], a) and torch.equal(out[2], b)
        assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1), b)
        assert not torch.equal(out[1], a) and not torch.equal(out[1], b)


def test_equal_norms_are_preserved_and_the_angle_is_linear_in_t():
    a = _randn(1, 4, 16, 16, seed=4)
    b = _randn(1, 4, 16, 16, seed=5)
    b = b * (a.norm() / b.norm())
    omega = _angle(a, b)
    assert 1.2 < omega < 1.9  # independent Gaussians: nearly orthogonal
    ts = torch.linspace(0, 1, 9)
    out = slerp(a, b, ts)
    assert out.shape == (9, 4, 16, 16)
    for t, x in zip(ts.tolist(), out):
        assert abs(x.norm().item() / a.norm().item() - 1) < 1e-4
        assert abs(_angle(a, x) - t * omega) < 1e-5
        assert abs(_angle(x, b) - (1 - t) * omega) < 1e-5
    # lerp would shrink the midpoint by ~cos(omega/2); slerp does not
    assert (a + b).norm() / 2 < 0.75 * out[4].norm()


def test_identical_and_parallel_latents_fall_back_to_lerp_without_nan():
    a = _randn(4, 8, 8, seed=6)
    same = slerp(a, a.clone(), torch.linspace(0, 1, 5))
    assert torch.isfinite(same).all()
    assert all(torch.equal(x, a) for x in same)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a, rtol=1e-6, atol=0)
    near = slerp(a, a + 1e-4 * _randn(4, 8, 8, seed=7), 0.5)
    assert torch.isfinite(near).all() and (near - a).abs().max() < 1e-3
    zero = slerp(a, torch.zeros_like(a), 0.25)  # a zero latent has no direction: lerp, no NaN
    assert torch.allclose(zero, 0.75 * a)
    assert torch.isnan(_reference_slerp(a, a.clone(), 0.5)).all()  # what the reference would have done


def test_opposite_latents_are_an_error():
    a = _randn(4, 8, 8, seed=8)
    with pytest.raises(InputError, match="opposite"):
        slerp(a, -a, 0.5)
    with pytest.raises(InputError, match="opposite"):
        slerp(a, -a + 1e-3 * _randn(4, 8, 8, seed=9), 0.5)
    latents = torch.stack([a, -a, _randn(4, 8, 8, seed=10), _randn(4, 8, 8, seed=11)])
    with pytest.raises(InputError, match="images 0 and 1"):
        interpolate(latents, k=2)


def test_fp16_latents_of_a_1024px_image_do_not_overflow():
    a = (3 * _randn(1, 4, 128, 128, seed=12)).half()
    b = (3 * _randn(1, 4, 128, 128, seed=13)).half()
    assert torch.isinf((a * a).sum())  # the naive fp16 dot product overflows at this size
    out = slerp(a, b, torch.tensor([0.0, 0.3, 0.5, 1.0]))
    assert out.dtype == torch.float16 and out.shape == (4, 4, 128, 128)
    assert torch.isfinite(out).all()
    ref = slerp(a.double(), b.double(), torch.tensor([0.0, 0.3, 0.5, 1.0]))
    assert (out.double() - ref).abs().max() < 1e-2
    assert abs(out[2].double().norm() / a.double().norm() - 1) < 0.02


def test_shapes_batches_and_pair_major_order():
    a, b = _randn(3, 4, 8, 8, seed=14), _randn(3, 4, 8, 8, seed=15)
    ts = torch.tensor([0.0, 0.5, 0.75, 1.0])
    batched = slerp(a, b, ts)
    assert batched.shape == (12, 4, 8, 8)
    for n in range(3):
        single = slerp(a[n], b[n], ts)  # [C, h, w] -> [T, C, h, w]
        assert single.shape == (4, 4, 8, 8)
        assert torch.equal(batched[4 * n:4 * n + 4], single)
        assert torch.equal(slerp(a[n:n + 1], b[n:n + 1], ts), single)  # [1, C, h, w] -> [T, C, h, w]
    scalar = slerp(a, b, 0.75)
    assert scalar.shape == a.shape
    assert torch.equal(scalar, batched[2::4])
    assert slerp(a[0, 0, 0], b[0, 0, 0], [0.1, 0.2]).shape == (2, 8)  # a plain vector
    with pytest.raises(InputError, match="same shape"):
        slerp(a, b[:2], 0.5)
    with pytest.raises(InputError, match="1-D"):
        slerp(a, b, torch.zeros(2, 2))


# ----------------------------------------------------------------------------------------------- schedules
def test_pair_indices_both_schedules_for_small_n():
    expected_consecutive = {
        2: [(0, 1)],
        3: [(0, 1), (1, 2)],
        4: [(0, 1), (2, 3)],
        5: [(0, 1), (2, 3), (3, 4)],
        6: [(0, 1), (2, 3), (4, 5)],
        7: [(0, 1), (2, 3), (4, 5), (5, 6)],
    }
    for n in range(1, 8):
        if n < 2:
            for schedule in ("consecutive", "all"):
                with pytest.raises(InputError, match="at least two images"):
                    pair_indices(n, schedule)
            continue
        assert pair_indices(n) == expected_consecutive[n]
        assert sorted({i for p in pair_indices(n) for i in p}) == list(range(n))  # every image used
        all_pairs = pair_indices(n, "all")
        assert len(all_pairs) == n * (n - 1) // 2
        assert all_pairs == sorted(all_pairs) and all(i < j for i, j in all_pairs)
    assert pair_indices(4, "all") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with pytest.raises(InputError, match="unknown pair schedule"):
        pair_indices(4, "random")


def test_interpolation_weights():
    assert interpolation_weights(10) == [i / 10 for i in range(11)]
    assert interpolation_weights(10)[3] == 0.3 and interpolation_weights(1) == [0.0, 1.0]
    for bad in (0, -1, 2.5):
        with pytest.raises(InputError, match="k"):
            interpolation_weights(bad)


def test_expected_count_matches_interpolate():
    assert expected_count(6, 10, "consecutive") == 33  # the paper: 6 images, 3 pairs, 11 weights
    assert expected_count(6, 10, "all") == 165
    latents = _randn(7, 4, 4, 4, seed=16)
    for n in range(2, 8):
        for k in (1, 3):
            for schedule in ("consecutive", "all"):
                out, labels = interpolate(latents[:n], k=k, pairs=schedule)
                assert out.shape[0] == len(labels) == expected_count(n, k, schedule)
    with pytest.raises(InputError, match="at least two images"):
        expected_count(1, 10)


# ----------------------------------------------------------------------------------------------- batches
def test_interpolate_order_values_and_determinism():
    latents = _randn(6, 4, 8, 8, seed=17)
    out, labels = interpolate(latents, k=10)
    assert out.shape == (33, 4, 8, 8) and out.dtype == latents.dtype
    assert labels[:3] == [(0, 1, 0.0), (0, 1, 0.1), (0, 1, 0.2)]
    assert labels[10] == (0, 1, 1.0) and labels[11] == (2, 3, 0.0) and labels[-1] == (4, 5, 1.0)
    for row, (i, j, w) in zip(out, labels):
        assert torch.equal(row, slerp(latents[i:i + 1], latents[j:j + 1], w)[0])
    assert torch.equal(out[0], latents[0]) and torch.equal(out[10], latents[1]) and torch.equal(out[32], latents[5])
    again, labels_again = interpolate(latents.clone(), k=10)
    assert torch.equal(out, again) and labels == labels_again

    explicit, explicit_labels = interpolate(latents, k=2, pairs=[(5, 0)])
    assert explicit_labels == [(5, 0, 0.0), (5, 0, 0.5), (5, 0, 1.0)]
    assert torch.equal(explicit[0], latents[5]) and torch.equal(explicit[2], latents[0])
    with pytest.raises(InputError, match="outside 0..5"):
        interpolate(latents, k=2, pairs=[(0, 6)])
    with pytest.raises(InputError, match=r"\[N, C, h, w\]"):
        interpolate(latents[0], k=2)


def test_interpolate_inverted_keeps_the_schedule():
    inv = InvertedLatents(latents=_randn(5, 4, 8, 8, seed=18), steps=50, start_step=15, faithful=True,
                          timestep=681, inverted_timestep=661, prompt="a photo of the parachute", guidance=7.5)
    out = interpolate_inverted(inv, k=4, pairs="consecutive")
    assert isinstance(out, InvertedLatents) and len(out) == expected_count(5, 4) == 15
    assert (out.steps, out.start_step, out.faithful, out.timestep, out.inverted_timestep, out.prompt) == \
        (50, 15, True, 681, 661, "a photo of the parachute")
    assert torch.equal(out.latents[4], inv.latents[1]) and torch.equal(out.latents[-1], inv.latents[4])
    assert len(inv) == 5  # input unchanged
