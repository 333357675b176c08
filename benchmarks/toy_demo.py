"""Benchmark of ``memora demo``: wall time per phase and every measured rate (figures in benchmarks/README.md).

    python benchmarks/toy_demo.py [--concept circle] [--threads 2] [--quick] [--seed 0] [--out DIR]

Runs the full toy demo (erase -> MemoRa recovery -> detection, with the control, the raw-image baseline and the
stronger eraser) exactly as ``memora demo`` does, then prints seconds per phase and the rates. The target is
< 300 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the reduced demo the tests run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    t_import = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from memora.toy.demo import run_demo

    import_seconds = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory(prefix="memora-bench-") as tmp:
        out = args.out or Path(tmp) / "demo"
        t0 = time.perf_counter()
        report = run_demo(args.concept, out, quick=args.quick, seed=args.seed, overwrite=args.out is not None)
        wall = time.perf_counter() - t0
    d = report["details"]
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"imports {import_seconds:.1f} s, demo {wall:.1f} s (report: {report['seconds']} s)")
    for phase, seconds in d["phases_seconds"].items():
        print(f"  {phase:<48} {seconds:7.1f} s")
    print(json.dumps({"rates": report["rates"], "curves": d["curves"], "steps_to_50": d["steps_to_50"],
                      "remap": d["remap"], "training_set": d["memora_training_set"],
                      "others_after_recovery": d["others_after_recovery"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**report, "benchmark_wall_seconds": wall, "imports_seconds": import_seconds,
                                         "load_average": os.getloadavg()[0]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
