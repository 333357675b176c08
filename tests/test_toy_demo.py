"""The toy world as the oracle: a reduced demo must erase the concept and MemoRa must bring it back."""

from __future__ import annotations

import json

import pytest

from memora.errors import InputError
from memora.toy.demo import run_demo, steps_to_reach


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo("circle", out, quick=True, verbose=False), out


def test_quick_demo_erases_and_recovers_the_concept(quick_report):
    report, _ = quick_report
    r = report["rates"]
    assert all(0.0 <= v <= 1.0 for v in r.values() if v is not None)
    assert r["original"] >= 0.75, r  # 32 samples: the full demo's 48 measure the >= 80 % target
    assert r["erased"] <= r["original"] - 0.4, r
    assert r["others_after_erase"] >= 0.5, r
    assert r["recovered"] >= r["erased"] + 0.25, r
    # the never-learned control learns far less from the same recovery than the erased model remembers
    assert r["control"] is not None and r["recovered"] >= r["control"] + 0.3, r


def test_quick_demo_writes_its_files(quick_report):
    report, out = quick_report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["rates"] == report["rates"] and on_disk["concept"] == "circle"
    assert on_disk["lora_steps"] == 150 and on_disk["seconds"] > 0
    assert (out / "grid.png").stat().st_size > 1000
    from memora.lora import read_lora_metadata

    meta = read_lora_metadata(out / "recovered_lora.safetensors")
    assert meta  # a kohya LoRA with MemoRa metadata


def test_demo_refuses_a_non_empty_folder(quick_report, tmp_path):
    _, out = quick_report
    with pytest.raises(InputError, match="not empty"):
        run_demo("circle", out, quick=True, verbose=False)
    with pytest.raises(InputError, match="shapes"):
        run_demo("hexagon", tmp_path / "x", quick=True, verbose=False)


def test_steps_to_reach():
    assert steps_to_reach({0: 0.1, 25: 0.4, 50: 0.55, 100: 0.9}) == 50
    assert steps_to_reach({0: 0.1, 25: 0.4}) is None
