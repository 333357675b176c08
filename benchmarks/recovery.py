"""Benchmark of one MemoRa recovery: time per phase and peak memory.

    python benchmarks/recovery.py                 # tiny SD1-layout model on the CPU (or SD1.5-size on a GPU)
    python benchmarks/recovery.py --size sd1      # SD 1.5-sized random-weight model (needs a GPU to be useful)

The paper's default job is 6 images -> 33 regenerations (DDIM 50, start step 15, CFG 7.5) -> 500 LoRA steps
(batch 1 x grad-accum 4) at 512 px. Target on one modern GPU: under 2 minutes and under 8 GB peak VRAM.
Random weights cost exactly what trained weights cost, so the timings carry over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from memora.config import InversionConfig, LoraTrainingConfig, RecoveryConfig  # noqa: E402
from memora.guidance import generate_automemora  # noqa: E402
from memora.lora import train_lora  # noqa: E402
from memora.model import DiffusionModel  # noqa: E402
from memora.recover import make_training_set  # noqa: E402
from memora.sampling import generate  # noqa: E402
from memora.sd1 import build_components  # noqa: E402


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def time_generation(model: DiffusionModel, n: int, resolution: int, device: torch.device) -> dict[str, float]:
    """Seconds per evaluation image with the trained LoRA (LMS 50, CFG 7.5), plain and with AutoMemoRa."""
    prompts = ["a photo of the parachute"] * n
    seeds = list(range(n))
    figures = {}
    for name, run in (("generate", generate), ("automemora", generate_automemora)):
        run(model, prompts[:1], seeds=seeds[:1], steps=2, height=resolution, width=resolution)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        images = run(model, prompts, seeds=seeds, steps=50, height=resolution, width=resolution, batch_size=n)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if not torch.isfinite(images).all():
            raise SystemExit(f"{name}: non-finite pixels")
        figures[f"{name}_s_per_image"] = round((time.perf_counter() - t0) / n, 3)
        figures[f"{name}_peak_memory_gb"] = round(peak_memory_gb(device), 2)
    return figures


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "sd1"], default="sd1" if cuda else "tiny")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16" if cuda else "fp32")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--start-step", type=int, default=15)
    p.add_argument("--interp", type=int, default=10)
    p.add_argument("--lora-steps", type=int, default=500 if cuda else 40)
    p.add_argument("--resolution", type=int, default=None, help="default: 512 for sd1, 64 for tiny")
    p.add_argument("--batch-size", type=int, default=8 if cuda else 4, help="images per UNet call in inversion")
    p.add_argument("--gradient-checkpointing", choices=["on", "off"], default="off",
                   help="trade LoRA step time for activation memory (the engine's default is off)")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="then time N evaluation images (LMS 50, CFG 7.5) with the LoRA, and N with AutoMemoRa")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models run fastest on one)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    resolution = args.resolution or (512 if args.size == "sd1" else 64)

    t0 = time.perf_counter()
    model = DiffusionModel(**build_components(args.size, device=device, dtype=dtype))
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, resolution, resolution, generator=g)

    config = RecoveryConfig(
        prompt="a photo of the parachute",
        inversion=InversionConfig(steps=args.steps, start_step=args.start_step, interp_steps=args.interp,
                                  batch_size=args.batch_size),
        lora=LoraTrainingConfig(steps=args.lora_steps, resolution=resolution,
                                gradient_checkpointing=args.gradient_checkpointing == "on"),
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    training = make_training_set(model, images, config, timings=timings)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = train_lora(model, training.images, config.prompt, config.lora)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timings["train"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    recovery_peak = peak_memory_gb(device)
    losses = [float(x) for x in result.losses]
    if not all(math.isfinite(x) for x in losses):
        raise SystemExit(f"non-finite LoRA loss: {losses[-10:]}")
    extra: dict[str, float] = {}
    if args.generate:
        extra = time_generation(model, args.generate, resolution, device)

    figures = {
        "size": args.size, "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "dtype": args.dtype, "threads": args.threads, "resolution": resolution, "images": args.images,
        "training_images": int(training.images.shape[0]), "lora_steps": result.steps_done,
        "build_s": round(build_s, 2),
        **{f"{k}_s": round(v, 2) for k, v in timings.items()},
        "train_step_ms": round(1000 * timings["train"] / max(1, result.steps_done), 1),
        "final_loss_mean_last_50": round(sum(losses[-50:]) / len(losses[-50:]), 5),
        "gradient_checkpointing": args.gradient_checkpointing,
        "peak_memory_gb": round(recovery_peak, 2),
        "peak_memory_kind": "CUDA max allocated" if device.type == "cuda" else "process max RSS",
        **extra,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
