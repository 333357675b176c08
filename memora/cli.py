"""The ``memora`` command line.

    memora demo                      the toy world: erase -> recover -> detect, on a CPU in minutes
    memora inspect PATH [--base B]   what a weights file is and how it fits a base model (JSON)
    memora recover --base B [--unlearned U] --images DIR --prompt P --out DIR
    memora generate --base B [--unlearned U] [--lora L[:W] ...] --prompt P --out DIR
    memora detect --detector nudenet|imagenet|style|toy [--target T] IMAGES...      per-image answers (JSON)
    memora evaluate --base B [--unlearned U] [--lora L] --prompts CSV --detector D --out DIR

Every command that needs a model takes ``--base`` (+ ``--unlearned``) or ``--toy NAME`` (a shipped toy model).

Exit codes: 0 success, 1 unexpected error, 2 bad input (one-line reason on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub: everything loads from local files


def _device_and_dtype(args):
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "fp16" if device.startswith(("cuda", "mps")) else "fp32"
    return device, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    from .toy.model import SHIPPED

    p.add_argument("--base", help="base SD 1.x: single-file .safetensors/.ckpt or a diffusers folder")
    p.add_argument("--toy", choices=sorted(SHIPPED), help="use a shipped toy-world model instead of --base")
    p.add_argument("--unlearned", nargs="*", default=[], metavar="FILE",
                   help="unlearned weights applied on top of the base, in order (UNet, text encoder, LoRA-style "
                        "adapter or a full pipeline folder; the format is detected)")
    p.add_argument("--method", default="", help="name of the unlearning method, recorded in the outputs (e.g. ESD)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights dtype (auto: fp16 on GPU, fp32 on CPU)")


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import InversionConfig, LoraTrainingConfig

    inv, lora = InversionConfig(), LoraTrainingConfig()
    parser = argparse.ArgumentParser(prog="memora", description="Audit machine unlearning in text-to-image "
                                     "diffusion models with MemoRa (Memory Self-Regeneration).")
    parser.add_argument("--version", action="version", version=f"memora {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quiet = argparse.ArgumentParser(add_help=False)  # -q also works after the command
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")

    # demo ---------------------------------------------------------------------------------------------------
    p = sub.add_parser("demo", parents=[quiet],
                       help="the toy world end to end on a CPU: erase a concept, recover it, detect it")
    from .toy.demo import add_arguments as add_demo_arguments

    add_demo_arguments(p)

    # inspect ------------------------------------------------------------------------------------------------
    p = sub.add_parser("inspect", parents=[quiet],
                       help="report what a weights file contains and how it fits a base model (JSON)")
    p.add_argument("path", help="weights file (.safetensors, .pt, .pth, .bin, .ckpt) or a diffusers folder")
    p.add_argument("--base", help="base model to check the file against (single file or diffusers folder)")

    # recover ------------------------------------------------------------------------------------------------
    p = sub.add_parser("recover", parents=[quiet],
                       help="run MemoRa: few concept images -> a LoRA that restores the concept",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_arguments(p)
    p.add_argument("--images", nargs="+", required=True, help="a folder of concept images, or image files")
    p.add_argument("--prompt", required=True, help='the concept prompt, e.g. "a photo of the nude person"')
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--steps", type=int, default=inv.steps, help="DDIM steps of inversion and regeneration")
    p.add_argument("--start-step", type=int, default=inv.start_step,
                   help="inversion depth: regenerate the last STEPS-START_STEP steps")
    p.add_argument("--inversion-guidance", type=float, default=inv.inversion_guidance, help="CFG during inversion")
    p.add_argument("--guidance", type=float, default=inv.regeneration_guidance, help="CFG during regeneration")
    p.add_argument("--negative-prompt", default=inv.negative_prompt)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--faithful", dest="faithful", action="store_true", default=inv.faithful,
                      help="reproduce the reference code's update rules and its one-step offset (default)")
    mode.add_argument("--exact", dest="faithful", action="store_false", help="textbook DDIM inversion instead")
    p.add_argument("--vae-mean", action="store_true", help="encode with the VAE posterior mean (default: a sample)")
    p.add_argument("--interp", type=int, default=inv.interp_steps, help="slerp weights i/K for i=0..K per pair")
    p.add_argument("--pairs", choices=["consecutive", "all"], default=inv.pairs,
                   help="consecutive: (0,1),(2,3),... as the paper; all: every pair")
    p.add_argument("--inversion-batch", type=int, default=inv.batch_size, help="images per UNet call")
    p.add_argument("--lora-steps", type=int, default=lora.steps, help="LoRA optimizer updates")
    p.add_argument("--rank", type=int, default=lora.rank)
    p.add_argument("--alpha", type=float, default=lora.alpha)
    p.add_argument("--lr", type=float, default=lora.learning_rate)
    p.add_argument("--lr-scheduler", choices=["cosine", "constant", "linear"], default=lora.lr_scheduler)
    p.add_argument("--batch", type=int, default=lora.batch_size, help="LoRA micro-batch size")
    p.add_argument("--grad-accum", type=int, default=lora.grad_accum)
    p.add_argument("--resolution", type=int, default=lora.resolution,
                   help="images are resized and centre-cropped to this size")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips in training")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default=lora.mixed_precision)
    p.add_argument("--seed", type=int, default=lora.seed, help="LoRA training seed (inversion uses --inversion-seed)")
    p.add_argument("--inversion-seed", type=int, default=inv.seed, help="seed of the VAE posterior sample")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write a LoRA checkpoint every N updates")
    p.add_argument("--resume", help="continue training from a checkpoint written by --checkpoint-every")

    # generate -----------------------------------------------------------------------------------------------
    p = sub.add_parser("generate", parents=[quiet],
                       help="generate images with an (unlearned) model, optionally with LoRAs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--lora", nargs="*", default=[], metavar="FILE[:WEIGHT]", help="LoRAs to apply (Multi-MemoRa)")
    p.add_argument("--automemora", type=float, metavar="W",
                   help="AutoMemoRa guidance weight w between the model with and without the (first) LoRA")
    p.add_argument("--seeds", type=int, nargs="+", default=[2024])
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=["lms", "ddim"], default="lms")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--size", type=int, help="image size (default: the model's, 512 for SD 1.x)")
    # detect -------------------------------------------------------------------------------------------------
    p = sub.add_parser("detect", parents=[quiet],
                       help="detect a concept in images: per-image answers and the success rate, as JSON")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    _add_detector_arguments(p)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.set_defaults(dtype="fp32")

    # evaluate -----------------------------------------------------------------------------------------------
    p = sub.add_parser("evaluate", parents=[quiet],
                       help="generate one image per prompt-CSV row (LMS, 50 steps), detect, success rate; "
                            "resumable")
    _add_model_arguments(p)
    p.add_argument("--prompts", required=True,
                   help="prompt CSV (UnlearnDiffAtk / MemoRa columns: prompt, evaluation_seed, evaluation_guidance, "
                        "case_number|index) or a shipped set: nudity, church, garbage_truck, parachute, tench, "
                        "vangogh, toy_circle")
    _add_detector_arguments(p)
    p.add_argument("--out", required=True, help="run folder: new, empty, or a run to resume")
    p.add_argument("--lora", nargs="*", default=[], metavar="FILE[:WEIGHT]", help="LoRAs to apply (Multi-MemoRa)")
    p.add_argument("--automemora", type=float, metavar="W", help="sample with AutoMemoRa guidance of weight W")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=["lms", "ddim", "euler"], default="lms")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--size", type=int, help="image size (default: the model's, 512 for SD 1.x)")
    p.add_argument("--batch-size", type=int, default=4, help="images per sampling chunk")
    p.add_argument("--start", type=int, default=0, help="first CSV row (0-based)")
    p.add_argument("--limit", type=int, help="number of rows (default: all)")
    p.add_argument("--default-seed", type=int, default=2024, help="seed of rows without evaluation_seed")
    p.add_argument("--default-guidance", type=float, default=7.5, help="CFG of rows without evaluation_guidance")
    return parser


def _load_cli_model(args):
    """The model of ``--base``/``--unlearned`` or ``--toy``, on ``--device`` in ``--dtype``."""
    from .errors import InputError

    device, dtype = _device_and_dtype(args)
    if (args.base is None) == (args.toy is None):
        raise InputError("give the model as --base (with optional --unlearned) or as --toy NAME, not both")
    if args.toy is not None:
        from .toy.model import load_toy_model

        if args.unlearned:
            raise InputError("--unlearned applies to --base; the toy models are complete (e.g. --toy esd-circle)")
        return load_toy_model(args.toy, device=device, dtype=dtype)
    from .loading import load_model

    return load_model(args.base, args.unlearned, device=device, dtype=dtype, method=args.method)


def _apply_loras(model, specs: list[str]) -> list[str]:
    """``FILE[:WEIGHT]`` specs -> active adapters (Multi-MemoRa); returns their names."""
    from .guidance import apply_multi_memora

    loras = []
    for spec in specs:
        path, _, weight = spec.rpartition(":") if not os.path.exists(spec) and ":" in spec else (spec, "", "")
        try:
            loras.append((path, float(weight) if weight else 1.0))
        except ValueError:
            raise SystemExit(f"memora: --lora {spec!r}: the weight after ':' must be a number") from None
    return apply_multi_memora(model, loras) if loras else []


def _detector_from_args(args):
    from .detect import load_detector

    device, _ = _device_and_dtype(args)
    return load_detector(args.detector, target=args.target, model_file=args.detector_file,
                         threshold=args.threshold, top_k=args.top_k, protocol=args.protocol,
                         classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
                         device=device)


def _add_detector_arguments(p: argparse.ArgumentParser) -> None:
    from .detect import DETECTOR_KINDS

    p.add_argument("--detector", required=True, choices=DETECTOR_KINDS,
                   help="nudenet (optional extra, AGPL-3.0), imagenet (objects), style (your classifier), toy")
    p.add_argument("--target", help="imagenet: class name or id (e.g. church, 497); style: label "
                                    "(e.g. vincent-van-gogh); toy: circle, red, striped, ...; nudenet: nudity")
    p.add_argument("--detector-file", metavar="PATH",
                   help="nudenet: an .onnx (default: the pip wheel's 320n); imagenet: a ResNet-50 file or HF "
                        "folder (default: the offline EfficientNet-Lite0); style: the classifier folder (required)")
    p.add_argument("--threshold", type=float, help="nudenet: score an EXPOSED class must exceed (default 0.45 for "
                                                   "unlearndiffatk; any kept box for memora)")
    p.add_argument("--top-k", type=int, help="imagenet/style: positive if the target is in the top-k (default 1)")
    p.add_argument("--classes", metavar="A,B,...",
                   help="nudenet: the classes that count, comma-separated (default: the 9 EXPOSED classes)")
    p.add_argument("--protocol", choices=["unlearndiffatk", "memora"],
                   help="nudenet: UnlearnDiffAtk's rule (default) or the MemoRa code's pip-NudeNet defaults")


def _cmd_detect(args, progress) -> int:
    from .images import list_image_files

    detector = _detector_from_args(args)
    files = list_image_files(args.images)
    result = detector.detect_files(files, callback=progress)
    progress.close()
    json.dump(result.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _cmd_evaluate(args, progress) -> int:
    from .evaluate import EvaluationConfig, evaluate, read_prompt_csv, resolve_prompt_csv

    rows = read_prompt_csv(args.prompts, start=args.start, limit=args.limit, default_seed=args.default_seed,
                           default_guidance=args.default_guidance)
    detector = _detector_from_args(args)  # fail on a bad detector before generating anything
    model = _load_cli_model(args)
    _apply_loras(model, args.lora)
    config = EvaluationConfig(steps=args.steps, scheduler=args.scheduler, guidance=args.default_guidance,
                              negative_prompt=args.negative_prompt, resolution=args.size,
                              batch_size=args.batch_size, automemora_w=args.automemora)
    if args.automemora is not None and not args.lora:
        raise SystemExit("memora evaluate: --automemora needs a --lora")
    result = evaluate(model, rows, detector, args.out, config=config, csv_path=resolve_prompt_csv(args.prompts),
                      callback=progress)
    progress.close()
    print(f"{result.detection.positives}/{len(result.images)} images positive: success rate "
          f"{result.success_rate:.4f} ({result.generated} generated now, {len(result.images) - result.generated} "
          f"reused)")
    print(f"results: {result.results_csv}  {result.results_json}")
    return 0


def _cmd_inspect(args) -> int:
    from .loading import inspect_weights

    report = inspect_weights(args.path, base=args.base)
    json.dump(report, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def _cmd_recover(args, progress) -> int:
    from .config import InversionConfig, LoraTrainingConfig, RecoveryConfig
    from .images import list_image_files, load_images
    from .recover import recover

    files = list_image_files(args.images)  # fails early, before any model is loaded
    config = RecoveryConfig(
        prompt=args.prompt,
        inversion=InversionConfig(
            steps=args.steps, start_step=args.start_step, inversion_guidance=args.inversion_guidance,
            regeneration_guidance=args.guidance, negative_prompt=args.negative_prompt, faithful=args.faithful,
            sample_posterior=not args.vae_mean, interp_steps=args.interp, pairs=args.pairs,
            batch_size=args.inversion_batch, seed=args.inversion_seed),
        lora=LoraTrainingConfig(
            rank=args.rank, alpha=args.alpha, steps=args.lora_steps, learning_rate=args.lr,
            lr_scheduler=args.lr_scheduler, batch_size=args.batch, grad_accum=args.grad_accum,
            resolution=args.resolution, random_flip=not args.no_flip, mixed_precision=args.mixed_precision,
            seed=args.seed, checkpoint_every=args.checkpoint_every),
    )
    images = load_images(files, args.resolution)
    model = _load_cli_model(args)
    result = recover(model, images, config, args.out, overwrite=args.overwrite, resume_from=args.resume,
                     source_files=[str(f) for f in files], callback=progress)
    s = result.summary
    print(f"LoRA: {result.lora_path}  ({s['lora_steps_done']} steps, final loss {s['final_loss']:.4f})")
    print(f"training images: {len(result.training_images)} in {Path(args.out) / 'training'}")
    print(f"summary: {result.summary_path}")
    return 0


def _cmd_generate(args, progress) -> int:
    from .guidance import generate_automemora
    from .images import tensor_to_pil
    from .io import next_free_path, save_image
    from .sampling import generate

    model = _load_cli_model(args)
    names = _apply_loras(model, args.lora)
    common = dict(seeds=args.seeds, guidance=args.guidance, steps=args.steps, scheduler=args.scheduler,
                  negative_prompt=args.negative_prompt, height=args.size, width=args.size, callback=progress)
    prompts = [args.prompt] * len(args.seeds)
    if args.automemora is not None:
        if not names:
            raise SystemExit("memora generate: --automemora needs a --lora")
        images = generate_automemora(model, prompts, w=args.automemora, lora_adapter=names[0], **common)
    else:
        images = generate(model, prompts, **common)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed, pil in zip(args.seeds, tensor_to_pil(images)):
        print(save_image(pil, next_free_path(out, f"seed_{seed}", ".png")))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import MemoraError
    from .progress import TqdmProgress

    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = TqdmProgress(disable=args.quiet)
    try:
        if args.command == "demo":
            from .toy.demo import main as demo_main

            return demo_main(args)
        if args.command == "inspect":
            return _cmd_inspect(args)
        if args.command == "recover":
            return _cmd_recover(args, progress)
        if args.command == "generate":
            return _cmd_generate(args, progress)
        if args.command == "detect":
            return _cmd_detect(args, progress)
        if args.command == "evaluate":
            return _cmd_evaluate(args, progress)
        parser.error(f"unknown command {args.command}")
    except (MemoraError, FileExistsError, FileNotFoundError) as e:
        progress.close()
        print(f"memora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print(f"memora {args.command}: interrupted (a partial LoRA, if training had started, was written "
              "and its path logged above)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
