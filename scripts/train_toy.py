"""Train everything the toy world ships, in one command, with recorded seeds.

    python scripts/train_toy.py                  # all stages, two worker processes, one thread each
    python scripts/train_toy.py --stage base     # one stage (base | control | detector | esd | remap | evaluate)

Wall times of the shipped files (single-threaded processes on a 2-core machine shared with other work, load
average 8-12 while base/control trained; uncontended, one base step is ~0.6 s, i.e. ~15 min per model):
base 4640 s and control 4636 s (in parallel), detector 1212 s (alongside them), ESD 73 s, remap 305 s,
evaluate 144 s. Seeds: model 0 (base and control), data 1 (base) / 2 (control), detector 3 (held-out set 99),
ESD 0, remap 5 (data 11); see memora/toy/settings.py and the metadata of every file.

Writes into ``memora/toy/weights/`` (or ``--out``):

- ``base.safetensors``           the toy text-to-image model (UNet + text encoder, fp16), all four shapes
- ``control.safetensors``        the never-learned control: same recipe, no circle ever shown
- ``detector.safetensors``       the concept classifier (shape incl. "other"/"empty", colour, background, texture)
- ``esd-x-circle.safetensors``   ESD-x erasure of "circle" from base (only the trained ``attn2`` K/V tensors)
- ``remap-circle.safetensors``   the stronger eraser (circle -> square remap with a retain set), full UNet
- ``training.json``              seeds, recipes, wall times, detector held-out accuracy and detection rates

Every stage stores its recipe and seeds in its file's safetensors metadata (``memora_toy`` key); ``evaluate``
collects them into ``training.json``. Existing files are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

STAGES = ("base", "control", "detector", "esd", "remap", "evaluate")
# the two worker processes of the default run ("all"): each list runs in order
WORKERS = (("base", "esd", "remap"), ("control", "detector"))


def _save(tensors: dict, path: Path, facts: dict, overwrite: bool) -> None:
    from memora.io import save_safetensors

    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    save_safetensors(tensors, path, metadata={"memora_toy": json.dumps(facts)}, overwrite=overwrite)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.2f} MB)", flush=True)


def stage_base(out: Path, overwrite: bool, *, control: bool = False) -> None:
    from memora.toy import data
    from memora.toy.model import model_state_dict
    from memora.toy.train import DiffusionTrainingConfig, train_diffusion

    if control:  # never-learned control: circles (and the word "circle") never appear in training
        cfg = DiffusionTrainingConfig(shapes=tuple(s for s in data.SHAPES if s != "circle"), model_seed=0, data_seed=2)
    else:
        cfg = DiffusionTrainingConfig(model_seed=0, data_seed=1)
    model, facts = train_diffusion(cfg)
    facts["kind"] = "control" if control else "base"
    _save(model_state_dict(model), out / ("control.safetensors" if control else "base.safetensors"), facts, overwrite)


def stage_detector(out: Path, overwrite: bool) -> None:
    from memora.toy.detector import DetectorTrainingConfig, train_detector

    cfg = DetectorTrainingConfig()
    det, facts = train_detector(cfg)
    facts["kind"] = "detector"
    _save(det.state_dict(), out / "detector.safetensors", facts, overwrite)


def _load_base(out: Path):
    from memora.io import read_tensors
    from memora.toy.model import apply_state_dict, build_model

    model = build_model()
    apply_state_dict(model, read_tensors(out / "base.safetensors")[0], partial=False)
    return model


def stage_esd(out: Path, overwrite: bool) -> None:
    from memora.erase import erased_state_dict, esd
    from memora.toy.settings import ToySettings

    settings = ToySettings()
    model = _load_base(out)
    result = esd(model, settings.esd_prompts("circle"), settings.esd)
    facts = {"kind": "esd", "concept": "circle", "method": result.method, "config": result.config,
             "prompts": sorted(set(settings.esd_prompts("circle"))), "seconds": result.seconds,
             "final_loss_mean_last20": sum(result.losses[-20:]) / len(result.losses[-20:]),
             "threads": torch.get_num_threads()}
    _save(erased_state_dict(model, result), out / "esd-x-circle.safetensors", facts, overwrite)


def stage_remap(out: Path, overwrite: bool) -> None:
    from memora.erase import erased_state_dict, remap
    from memora.toy.settings import REMAP_ANCHOR, ToySettings

    settings = ToySettings()
    model = _load_base(out)
    result = remap(model, settings.remap_data("circle"), settings.remap)
    facts = {"kind": "remap", "concept": "circle", "anchor": REMAP_ANCHOR["circle"], "method": result.method,
             "config": result.config, "pool": settings.remap_pool, "data_seed": settings.remap_data_seed,
             "seconds": result.seconds, "threads": torch.get_num_threads()}
    _save(erased_state_dict(model, result), out / "remap-circle.safetensors", facts, overwrite)


def stage_evaluate(out: Path, overwrite: bool) -> None:
    from memora.toy.demo import evaluate_shipped

    facts = evaluate_shipped(out)
    path = out / "training.json"
    from memora.io import save_json

    save_json(facts, path, overwrite=True)
    print(json.dumps(facts.get("evaluation", {}), indent=2))
    print(f"wrote {path}")


OUTPUTS = {"base": "base.safetensors", "control": "control.safetensors", "detector": "detector.safetensors",
           "esd": "esd-x-circle.safetensors", "remap": "remap-circle.safetensors"}


def check_outputs(stages, out: Path, overwrite: bool) -> None:
    """Refuse before training (not after it) when a stage's file exists and ``--overwrite`` is not given."""
    taken = [out / OUTPUTS[s] for s in stages if s in OUTPUTS and (out / OUTPUTS[s]).exists()]
    if taken and not overwrite:
        raise SystemExit(f"{', '.join(str(p) for p in taken)} already exist(s); pass --overwrite to retrain")


def run_stage(name: str, out: Path, overwrite: bool) -> None:
    torch.set_num_threads(1)
    t0 = time.time()
    print(f"== stage {name}", flush=True)
    if name == "base":
        stage_base(out, overwrite)
    elif name == "control":
        stage_base(out, overwrite, control=True)
    elif name == "detector":
        stage_detector(out, overwrite)
    elif name == "esd":
        stage_esd(out, overwrite)
    elif name == "remap":
        stage_remap(out, overwrite)
    elif name == "evaluate":
        stage_evaluate(out, overwrite)
    print(f"== stage {name} done in {time.time() - t0:.0f} s", flush=True)


def _worker(stages: tuple[str, ...], out: Path, overwrite: bool) -> None:
    for name in stages:
        run_stage(name, out, overwrite)


def main(argv: list[str] | None = None) -> int:
    from memora.toy.model import WEIGHTS_DIR, write_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("all",) + STAGES, default="all")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--overwrite", action="store_true", help="replace existing weight files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(args.out / "tokenizer")
    t0 = time.time()
    if args.stage != "all":
        check_outputs([args.stage], args.out, args.overwrite)
        run_stage(args.stage, args.out, args.overwrite)
        return 0
    check_outputs(STAGES, args.out, args.overwrite)
    procs = [mp.get_context("spawn").Process(target=_worker, args=(w, args.out, args.overwrite)) for w in WORKERS]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        print("a training worker failed; see the log above", file=sys.stderr)
        return 1
    run_stage("evaluate", args.out, args.overwrite)
    print(f"all stages done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
