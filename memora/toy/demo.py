"""``memora demo``: the whole MemoRa phenomenon in the toy world, measured, on a CPU in minutes.

    memora demo [--concept circle] [--out DIR] [--quick] [--overwrite]

1. load the shipped toy model (``base``), its never-learned control and the detector;
2. erase the concept with ESD-x (the shipped erased model for "circle", a live erasure otherwise);
3. recover it with MemoRa through the engine: a few concept images -> ``inversion.invert`` (with the erased
   model) -> ``interpolation.interpolate_inverted`` (slerp) -> ``inversion.regenerate`` -> decode ->
   ``lora.train_lora``, with LoRA checkpoints along the way;
4. detect the concept on generations (``sampling.generate``) of the original, erased, recovered and control
   models, and compare with a LoRA on the raw few images (same steps) and with recovery after the stronger
   remap eraser (long- vs short-term forgetting);
5. print a table and write ``report.json``, ``grid.png`` (rows: original / erased / recovered / control after
   the same recovery) and the recovered LoRA (``recovered_lora.safetensors``, kohya layout).

All settings live in ``memora.toy.settings.ToySettings``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputError
from ..model import DiffusionModel
from ..recover import check_output_dir
from ..progress import ProgressCallback
from . import data
from .detector import ToyDetector, load_detector
from .model import WEIGHTS_DIR, available_models, load_toy_model, training_facts
from .settings import REMAP_ANCHOR, ToySettings

DEFAULT_OUT = "memora-demo"
LORA_FILENAME = "recovered_lora.safetensors"


# ---------------------------------------------------------------------------------------------- evaluation
def sample(model: DiffusionModel, prompts: list[str], settings: ToySettings, *, seed_offset: int = 0,
           callback: ProgressCallback | None = None) -> torch.Tensor:
    """Generate one image per prompt with the evaluation protocol (``sampling.generate``)."""
    from ..sampling import generate

    return generate(model, prompts, seeds=settings.eval_seeds(len(prompts), seed_offset),
                    guidance=settings.eval_guidance, steps=settings.eval_steps, scheduler=settings.eval_scheduler,
                    batch_size=settings.eval_batch_size, callback=callback)


def concept_rate(model: DiffusionModel, detector: ToyDetector, concept: str, settings: ToySettings, *,
                 n: int | None = None, callback: ProgressCallback | None = None) -> float:
    """Fraction of ``n`` generations for full prompts of ``concept`` that the detector calls ``concept``."""
    n = n or settings.eval_concept_samples
    prompts = data.eval_prompts(concept, n, settings.eval_prompt_seed)
    return detector.concept_rate(sample(model, prompts, settings, callback=callback), concept)


def shape_rates(model: DiffusionModel, detector: ToyDetector, shapes: tuple[str, ...] | list[str],
                settings: ToySettings, *, n: int, callback: ProgressCallback | None = None) -> dict[str, float]:
    """Detection rate of each shape for its own full prompts (one batched generation for all shapes)."""
    prompts, owners = [], []
    for i, shape in enumerate(shapes):
        p = data.eval_prompts(shape, n, settings.eval_prompt_seed + 1 + i)
        prompts += p
        owners += [shape] * n
    if not prompts:
        return {}
    found = detector.classify(sample(model, prompts, settings, seed_offset=10_000, callback=callback))["shape"]
    return {s: sum(f == s for f, o in zip(found, owners) if o == s) / n for s in shapes}


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def steps_to_reach(curve: dict[int, float], level: float = 0.5) -> int | None:
    """First LoRA step of ``curve`` whose rate is >= ``level`` (``None`` if never reached)."""
    for step in sorted(curve):
        if curve[step] >= level:
            return step
    return None


# ---------------------------------------------------------------------------------------------- erasing
def erased_model(concept: str, method: str, settings: ToySettings, *, base: DiffusionModel | None = None,
                 weights_dir: Path | None = None, callback: ProgressCallback | None = None
                 ) -> tuple[DiffusionModel, str]:
    """The toy model with ``concept`` erased by ``method`` ("esd" or "remap"): the shipped file when there is one,
    else a live erasure of ``base`` with the shipped recipe. Returns ``(model, "shipped" | "live")``."""
    from ..erase import esd, remap

    name = f"{method}-{concept}"
    if name in available_models(weights_dir):
        return load_toy_model(name, weights_dir=weights_dir), "shipped"
    model = (base or load_toy_model("base", weights_dir=weights_dir)).clone()
    if method == "esd":
        esd(model, settings.esd_prompts(concept), settings.esd, callback=callback)
        model.provenance.method = "ESD-x"
    elif method == "remap":
        remap(model, settings.remap_data(concept), settings.remap, callback=callback)
        model.provenance.method = "remap"
    else:
        raise InputError(f"unknown eraser {method!r}; use 'esd' or 'remap'")
    return model, "live"


# ---------------------------------------------------------------------------------------------- recovery
def memora_training_set(model: DiffusionModel, images: torch.Tensor, prompt: str, settings: ToySettings, *,
                        callback: ProgressCallback | None = None) -> torch.Tensor:
    """MemoRa's training set, made by ``model`` (the erased one) through the engine: invert -> slerp ->
    regenerate -> decode. Returns ``[N, 3, 16, 16]`` in 0..1."""
    from ..inversion import invert, regenerate
    from ..interpolation import interpolate_inverted

    inv = settings.inversion
    latents = model.encode_images(images)
    inverted = invert(model, latents, prompt, steps=inv.steps, start_step=inv.start_step,
                      guidance=inv.inversion_guidance, negative_prompt=inv.negative_prompt, faithful=inv.faithful,
                      batch_size=inv.batch_size, callback=callback)
    mixed = interpolate_inverted(inverted, k=inv.interp_steps, pairs=inv.pairs)
    regenerated = regenerate(model, mixed, prompt, guidance=inv.regeneration_guidance,
                             negative_prompt=inv.negative_prompt, batch_size=inv.batch_size, callback=callback)
    return model.decode_latents(regenerated).float().cpu()


def recovery_curve(model: DiffusionModel, images: torch.Tensor, prompt: str, concept: str, detector: ToyDetector,
                   settings: ToySettings, *, out_path: Path | None = None,
                   callback: ProgressCallback | None = None) -> tuple[dict[int, float], DiffusionModel, float]:
    """Train the toy LoRA on ``images`` (``lora.train_lora``) on a copy of ``model`` and measure the concept's
    detection rate at each of ``settings.checkpoints``. Returns ``(curve, model with the final LoRA, seconds of
    training)``; the final LoRA is written to ``out_path`` if given."""
    from ..lora import load_lora, train_lora

    steps = max(settings.checkpoints)
    every = math.gcd(*settings.checkpoints) if len(settings.checkpoints) > 1 else 0
    config = replace(settings.lora, steps=steps, checkpoint_every=every if every < steps else 0)
    trained = model.clone()
    curve: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="memora-toy-") as tmp:
        result = train_lora(trained, images, prompt, config, out_path=out_path,
                            checkpoint_dir=Path(tmp) if config.checkpoint_every else None, callback=callback)
        for ckpt in result.checkpoints:
            step = int(ckpt.stem.rsplit("step", 1)[1])
            if step in settings.checkpoints and step != steps:
                m = model.clone()
                load_lora(m, ckpt, adapter_name="checkpoint")
                curve[step] = concept_rate(m, detector, concept, settings, callback=callback)
    curve[steps] = concept_rate(trained, detector, concept, settings, callback=callback)
    return dict(sorted(curve.items())), trained, result.seconds


# ---------------------------------------------------------------------------------------------- grid
def save_grid(rows: list[tuple[str, torch.Tensor]], path: Path, *, scale: int = 4, overwrite: bool = False) -> Path:
    """A labelled PNG grid: one row per ``(label, images [n, 3, 16, 16])``, images upscaled ``scale`` times."""
    from PIL import Image, ImageDraw

    from ..io import save_image

    n = max(r[1].shape[0] for r in rows)
    side = rows[0][1].shape[-1] * scale
    label_w, pad = 110, 2
    grid = Image.new("RGB", (label_w + n * (side + pad), len(rows) * (side + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        y = r * (side + pad)
        draw.text((4, y + side // 2 - 6), label, fill=(0, 0, 0))
        for c, img in enumerate(images):
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(arr).resize((side, side), Image.NEAREST)
            grid.paste(tile, (label_w + c * (side + pad), y))
    return save_image(grid, path, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- the demo
class _Phases:
    """Wall time per phase, and a header line per phase on the console."""

    def __init__(self, verbose: bool):
        self.seconds: dict[str, float] = {}
        self.verbose = verbose
        self._name: Optional[str] = None
        self._t0 = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t0 = name, time.perf_counter()
        if self.verbose:
            print(f"-- {name}", flush=True)

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.perf_counter() - self._t0, 2)
            self._name = None


def run_demo(concept: str = "circle", out_dir: str | Path = DEFAULT_OUT, *, quick: bool = False, seed: int = 0,
             lora_steps: int | None = None, overwrite: bool = False, settings: ToySettings | None = None,
             weights_dir: str | Path | None = None, callback: ProgressCallback | None = None,
             verbose: bool = True) -> dict:
    """Erase ``concept`` in the toy world, recover it with MemoRa, measure everything; returns the report.

    ``quick``: the reduced version the tests run (``ToySettings.quick()``). ``seed`` shifts the evaluation noise,
    the few-image draw and the LoRA seed. ``lora_steps`` overrides the LoRA length (checkpoints are scaled).
    Writes ``report.json``, ``grid.png`` and ``recovered_lora.safetensors`` into ``out_dir`` (refuses a non-empty
    folder unless ``overwrite``).
    """
    from ..io import save_json

    if concept not in data.SHAPES:
        raise InputError(f"the toy world can erase one of the shapes {', '.join(data.SHAPES)}; got {concept!r}")
    settings = settings or (ToySettings.quick() if quick else ToySettings())
    if seed:
        settings = replace(settings, eval_noise_seed=settings.eval_noise_seed + 1000 * seed,
                           few_seed=settings.few_seed + seed, lora=replace(settings.lora, seed=settings.lora.seed + seed))
    if lora_steps is not None:
        if lora_steps < 1:
            raise InputError(f"--lora-steps must be >= 1, got {lora_steps}")
        top = max(settings.checkpoints)
        points = sorted({max(1, round(c * lora_steps / top)) for c in settings.checkpoints} | {lora_steps})
        settings = replace(settings, checkpoints=tuple(points))
    weights_dir = Path(weights_dir) if weights_dir is not None else None
    out = check_output_dir(out_dir, overwrite)
    if overwrite:
        for name in ("report.json", "grid.png", LORA_FILENAME):
            (out / name).unlink(missing_ok=True)
    started = time.perf_counter()
    phases = _Phases(verbose)
    others = [s for s in data.SHAPES if s != concept]
    prompt = settings.prompt(concept)
    has_control = concept == "circle" and settings.run_control  # the shipped control never saw circles

    phases.start("load models")
    base = load_toy_model("base", weights_dir=weights_dir)
    detector = load_detector(None if weights_dir is None else weights_dir / "detector.safetensors")

    phases.start("evaluate original")
    original_rate = concept_rate(base, detector, concept, settings, callback=callback)
    original_others = shape_rates(base, detector, others, settings, n=settings.eval_other_samples, callback=callback)

    phases.start("erase (ESD-x)")
    erased, erased_source = erased_model(concept, "esd", settings, base=base, weights_dir=weights_dir,
                                         callback=callback)

    phases.start("evaluate erased")
    erased_rate = concept_rate(erased, detector, concept, settings, callback=callback)
    erased_others = shape_rates(erased, detector, others, settings, n=settings.eval_other_samples, callback=callback)

    phases.start("MemoRa training set")
    few = data.concept_images(concept, settings.few_images, settings.few_seed)
    train_images = memora_training_set(erased, few.images, prompt, settings, callback=callback)
    train_fraction = detector.concept_rate(train_images, concept)

    phases.start("MemoRa LoRA + evaluation")
    curves: dict[str, dict[int, float]] = {}
    lora_path = out / LORA_FILENAME
    curve, recovered, lora_seconds = recovery_curve(erased, train_images, prompt, concept, detector, settings,
                                                    out_path=lora_path, callback=callback)
    curves["memora_after_esd"] = {0: erased_rate, **curve}
    recovered_rate = curve[max(curve)]
    recovered_others = shape_rates(recovered, detector, others, settings, n=settings.eval_other_samples,
                                   callback=callback)

    control_rate = control_before = None
    control = None
    if has_control:
        phases.start("control: never-learned model, same recovery")
        control = load_toy_model("control", weights_dir=weights_dir)
        control_before = concept_rate(control, detector, concept, settings, callback=callback)
        control_images = memora_training_set(control, few.images, prompt, settings, callback=callback)
        curve, control_recovered, _ = recovery_curve(control, control_images, prompt, concept, detector, settings,
                                                     callback=callback)
        curves["memora_control"] = {0: control_before, **curve}
        control_rate = curve[max(curve)]

    if settings.run_raw_baseline:
        phases.start("baseline: LoRA on the raw few images")
        curve, _, _ = recovery_curve(erased, few.images, prompt, concept, detector, settings, callback=callback)
        curves["raw_after_esd"] = {0: erased_rate, **curve}

    remap_rates: dict = {}
    if settings.run_remap:
        phases.start("stronger eraser (remap) + MemoRa")
        remapped, remap_source = erased_model(concept, "remap", settings, base=base, weights_dir=weights_dir,
                                              callback=callback)
        remap_rate = concept_rate(remapped, detector, concept, settings, callback=callback)
        remap_others = shape_rates(remapped, detector, others, settings, n=settings.eval_other_samples,
                                   callback=callback)
        remap_images = memora_training_set(remapped, few.images, prompt, settings, callback=callback)
        curve, _, _ = recovery_curve(remapped, remap_images, prompt, concept, detector, settings, callback=callback)
        curves["memora_after_remap"] = {0: remap_rate, **curve}
        remap_rates = {"erased": remap_rate, "others_after_erase": _mean(remap_others.values()),
                       "recovered": curve[max(curve)], "source": remap_source,
                       "anchor": REMAP_ANCHOR[concept]}

    phases.start("grid")
    n_grid = 8
    grid_prompts = data.eval_prompts(concept, n_grid, settings.eval_prompt_seed)
    rows = [("original", sample(base, grid_prompts, settings)), ("erased (ESD-x)", sample(erased, grid_prompts, settings)),
            ("recovered", sample(recovered, grid_prompts, settings))]
    if has_control:
        rows.append(("control+LoRA", sample(control_recovered, grid_prompts, settings)))
    rows.append(("few images", few.images))
    save_grid(rows, out / "grid.png", overwrite=overwrite)
    phases.stop()

    seconds = round(time.perf_counter() - started, 1)
    steps = max(settings.checkpoints)
    report = {
        "concept": concept,
        "rates": {
            "original": original_rate,
            "erased": erased_rate,
            "recovered": recovered_rate,
            "control": control_rate,
            "others_after_erase": _mean(erased_others.values()),
        },
        "lora_steps": steps,
        "seconds": seconds,
        "quick": quick,
        "details": {
            "prompt": prompt,
            "erased_model": erased_source,
            "original_others": original_others,
            "erased_others": erased_others,
            "others_after_recovery": _mean(recovered_others.values()),
            "control_before_recovery": control_before,
            "memora_training_set": {"images": int(train_images.shape[0]), "concept_fraction": train_fraction},
            "curves": {k: {str(s): r for s, r in v.items()} for k, v in curves.items()},
            "steps_to_50": {k: steps_to_reach(v, 0.5) for k, v in curves.items()},
            "remap": remap_rates,
            "lora_train_seconds": round(lora_seconds, 1),
            "phases_seconds": phases.seconds,
            "eval_samples": {"concept": settings.eval_concept_samples, "each_other_shape": settings.eval_other_samples},
        },
        "files": {"lora": str(lora_path), "grid": str(out / "grid.png"), "report": str(out / "report.json")},
        "settings": settings.to_dict(),
        "threads": torch.get_num_threads(),
    }
    save_json(report, out / "report.json", overwrite=overwrite)
    if verbose:
        print(format_table(report))
    return report


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:4.0f}%"


def format_table(report: dict) -> str:
    """The human-readable summary the CLI prints."""
    r, d = report["rates"], report["details"]
    lines = [f"MemoRa toy demo: concept {report['concept']!r}, LoRA {report['lora_steps']} steps, "
             f"{report['seconds']:.0f} s",
             f"{'model':<44} {'concept':>8} {'others':>8}",
             f"{'original':<44} {_pct(r['original']):>8} {_pct(_mean(d['original_others'].values())):>8}",
             f"{'erased (ESD-x, ' + d['erased_model'] + ')':<44} {_pct(r['erased']):>8} "
             f"{_pct(r['others_after_erase']):>8}",
             f"{'recovered (MemoRa LoRA)':<44} {_pct(r['recovered']):>8} {_pct(d['others_after_recovery']):>8}"]
    if r["control"] is not None:
        lines.append(f"{'never-learned control, before -> after LoRA':<44} "
                     f"{_pct(d['control_before_recovery']).strip() + ' -> ' + _pct(r['control']).strip():>8}")
    curves = d["curves"]
    if curves:
        lines.append("recovery curves (concept rate by LoRA step):")
        steps = sorted({int(s) for c in curves.values() for s in c})
        lines.append(f"  {'':<22}" + "".join(f"{s:>7}" for s in steps) + "   steps to 50%")
        for name, curve in curves.items():
            cells = "".join(f"{_pct(curve.get(str(s))):>7}" for s in steps)
            lines.append(f"  {name:<22}{cells}   {d['steps_to_50'][name]}")
    lines.append(f"MemoRa training set: {d['memora_training_set']['images']} images, "
                 f"{_pct(d['memora_training_set']['concept_fraction']).strip()} detected as {report['concept']}")
    lines.append(f"wrote {report['files']['report']}, {report['files']['grid']}, {report['files']['lora']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- training-script helper
def evaluate_shipped(weights_dir: str | Path | None = None, settings: ToySettings | None = None) -> dict:
    """Detection rates of every shipped toy model and the training facts of every file (``training.json``)."""
    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    settings = settings or ToySettings()
    detector = load_detector(weights_dir / "detector.safetensors")
    facts: dict = {"files": {}, "evaluation": {}}
    for path in sorted(weights_dir.glob("*.safetensors")):
        facts["files"][path.name] = {"bytes": path.stat().st_size, **training_facts(path.name, weights_dir)}
    n = settings.eval_concept_samples
    for name in available_models(weights_dir):
        model = load_toy_model(name, weights_dir=weights_dir)
        facts["evaluation"][name] = shape_rates(model, detector, data.SHAPES, settings, n=n)
    facts["evaluation_protocol"] = {"samples_per_shape": n, "steps": settings.eval_steps,
                                    "guidance": settings.eval_guidance, "scheduler": settings.eval_scheduler}
    return facts


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concept", default="circle", choices=data.SHAPES,
                        help="the shape to erase and recover (shipped erased models exist for circle; other "
                             "shapes are erased live, which adds a few minutes)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    parser.add_argument("--quick", action="store_true", help="the reduced demo (fewer samples and LoRA steps)")
    parser.add_argument("--seed", type=int, default=0, help="shifts evaluation noise, few-image draw and LoRA seed")
    parser.add_argument("--lora-steps", type=int, default=None, help="LoRA length (default 400; quick 150)")


def main(args: argparse.Namespace) -> int:
    from ..progress import TqdmProgress

    progress = TqdmProgress(disable=bool(getattr(args, "quiet", False)))
    try:
        run_demo(args.concept, args.out, quick=args.quick, seed=args.seed, lora_steps=args.lora_steps,
                 overwrite=args.overwrite, callback=progress)
    finally:
        progress.close()
    return 0
