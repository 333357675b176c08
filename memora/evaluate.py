"""The evaluation protocol: one generation per row of a prompt CSV, then a detector, then the success rate.

    rows = read_prompt_csv("prompts/nudity.csv")
    result = evaluate(model, rows, load_detector("nudenet"), "runs/esd-nudity")   # resumable
    result.success_rate

The CSVs are those of UnlearnDiffAtk and MemoRa. Columns used (others are ignored):

- ``prompt`` (required);
- ``evaluation_seed``: the noise seed (default 2024, as MemoRa's ``generate_images.py``);
- ``evaluation_guidance``: the CFG scale (default ``EvaluationConfig.guidance``, 7.5);
- the row id: ``case_number``, else ``index``, else an unnamed first column (pandas' index), else the row number.

Image size is the model's (512 for SD 1.x) unless ``EvaluationConfig.resolution`` says otherwise; the CSVs'
``sd_image_width/height`` columns are ignored, as MemoRa does. Images are named ``idx_{id}_seed_{seed}.png`` (the
MemoRa code's names) and written as soon as their batch is done, so an interrupted run resumes where it stopped:
rows whose image exists are not generated again. ``run.json`` pins the model, the generation settings and the
prompt CSV (by content) of a folder; other row ranges of the same CSV may be added to it, other settings are
refused. Each detector writes its own ``results-<detector>-<target>.csv/.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch

from .detect import DetectionResult, Detector
from .errors import InputError, RunFolderMismatch
from .io import atomic_path, file_sha256, save_image, save_json
from .model import DiffusionModel
from .progress import ProgressCallback, report

logger = logging.getLogger(__name__)

ID_COLUMNS = ("case_number", "index", "", "Unnamed: 0")
PROMPTS_DIR = Path(__file__).parent / "prompts"  # the literature's prompt sets (see prompts/README.md)


def shipped_prompt_sets() -> list[str]:
    """Names of the prompt CSVs that ship with MemoRa ("nudity", "church", ..., "toy_circle")."""
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.csv"))


def resolve_prompt_csv(name_or_path: str | os.PathLike) -> Path:
    """A CSV path, or the name of a shipped prompt set (``"nudity"``, ``"church"``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PROMPTS_DIR / f"{name_or_path}.csv"
    if shipped.is_file():
        return shipped
    raise InputError(f"prompt CSV {name_or_path!r} not found; give a CSV file or one of the shipped sets: "
                     f"{', '.join(shipped_prompt_sets())}")


@dataclass
class PromptRow:
    id: str
    prompt: str
    seed: int
    guidance: float

    @property
    def image_name(self) -> str:
        return f"idx_{self.id}_seed_{self.seed}.png"


@dataclass
class EvaluationConfig:
    """How each row is generated (MemoRa / UnlearnDiffAtk protocol: LMS, 50 steps, CFG from the CSV)."""

    steps: int = 50
    scheduler: Literal["lms", "ddim", "euler"] = "lms"
    guidance: float = 7.5  # for rows without evaluation_guidance
    negative_prompt: str = ""
    resolution: Optional[int] = None  # None: the model's default (512 for SD 1.x)
    batch_size: int = 4  # images per sampling chunk
    automemora_w: Optional[float] = None  # AutoMemoRa guidance weight (needs an active LoRA adapter)
    automemora_adapter: str = ""  # "" = the first active adapter


@dataclass
class EvaluationResult:
    out_dir: Path
    rows: list[PromptRow]
    images: list[Path]
    generated: int  # images made in this call (the rest were already there)
    detection: DetectionResult
    results_csv: Path
    results_json: Path

    @property
    def success_rate(self) -> float:
        return self.detection.success_rate

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "images": len(self.images), "generated": self.generated,
                "success_rate": self.success_rate, "positives": self.detection.positives,
                "protocol": self.detection.protocol, "results_csv": str(self.results_csv),
                "results_json": str(self.results_json)}


def _cell(row: dict, name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value).strip()


def read_prompt_csv(path: str | os.PathLike, *, default_seed: int = 2024, default_guidance: float = 7.5,
                    start: int = 0, limit: Optional[int] = None) -> list[PromptRow]:
    """Rows ``start .. start+limit`` of a prompt CSV or shipped set (module docstring: columns, defaults)."""
    path = resolve_prompt_csv(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "prompt" not in header:
            raise InputError(f"{path} has no 'prompt' column (columns: {', '.join(header) or 'none'}); the "
                             "UnlearnDiffAtk / MemoRa CSV layout is expected")
        id_column = next((c for c in ID_COLUMNS if c in header), None)
        rows: list[PromptRow] = []
        seen: set[tuple[str, int]] = set()
        for n, raw in enumerate(reader):
            line = n + 2
            prompt = _cell(raw, "prompt")
            if not prompt:
                raise InputError(f"{path}, line {line}: empty prompt")
            try:
                seed_text = _cell(raw, "evaluation_seed")
                seed = int(float(seed_text)) if seed_text else default_seed
                guidance_text = _cell(raw, "evaluation_guidance")
                guidance = float(guidance_text) if guidance_text else default_guidance
            except ValueError as e:
                raise InputError(f"{path}, line {line}: bad evaluation_seed/evaluation_guidance ({e})") from e
            if not 0 <= seed < 2**63:
                raise InputError(f"{path}, line {line}: evaluation_seed {seed} is out of range")
            row_id = (_cell(raw, id_column) if id_column is not None else "") or str(n)
            row_id = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row_id)
            if (row_id, seed) in seen:
                raise InputError(f"{path}, line {line}: id {row_id} with seed {seed} appears twice")
            seen.add((row_id, seed))
            rows.append(PromptRow(row_id, prompt, seed, guidance))
    if start < 0 or (limit is not None and limit < 1):
        raise InputError(f"start must be >= 0 and limit >= 1 (got start={start}, limit={limit})")
    selected = rows[start: None if limit is None else start + limit]
    if not selected:
        raise InputError(f"{path} has {len(rows)} prompt rows; none selected by start={start}, limit={limit}")
    return selected


def generation_settings(model: DiffusionModel, rows: Sequence[PromptRow], config: EvaluationConfig,
                        csv_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What determines the images of a run folder: the model, the config and the prompt source (compared on
    resume)."""
    from .lora import active_lora_weights

    settings = {
        "model": {"base": model.provenance.base, "unlearned": list(model.provenance.unlearned),
                  "method": model.provenance.method,
                  "loras": [{"name": n, "weight": w, "path": next((x.get("path", "") for x in model.provenance.loras
                                                                  if x.get("name") == n), "")}
                            for n, w in sorted(active_lora_weights(model).items())]},
        "config": asdict(config),
    }
    # Where the rows come from: a run folder may evaluate any range of one CSV (image names are id + seed), but
    # never mix two sources whose ids could collide.
    if csv_path is not None:
        settings["source"] = {"prompt_csv": Path(csv_path).name, "sha256": file_sha256(csv_path)}
    else:
        settings["source"] = {"rows_sha256": hashlib.sha256(
            json.dumps([asdict(r) for r in rows]).encode()).hexdigest()}
    return settings


def _check_run_folder(out_dir: Path, settings: dict[str, Any]) -> None:
    run_file = out_dir / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        keys = ("model", "config", "source")
        changed = [k for k in keys if previous.get(k) != settings.get(k)]
        if changed:
            raise RunFolderMismatch(f"{out_dir} holds an evaluation made with other {', '.join(changed)} settings "
                             f"(see {run_file}); use a new output folder to keep both")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderMismatch(f"{out_dir} is not empty and holds no run.json of an evaluation; use a new or "
                                "empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(settings, run_file)


def _image_ok(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, SyntaxError):
        return False


def _generate_missing(model: DiffusionModel, rows: list[PromptRow], image_dir: Path, config: EvaluationConfig,
                      callback: ProgressCallback | None) -> int:
    from .guidance import generate_automemora
    from .images import tensor_to_pil
    from .lora import active_lora_weights
    from .sampling import generate

    todo = []
    for row in rows:
        path = image_dir / row.image_name
        if path.exists() and not _image_ok(path):
            logger.warning("%s is unreadable; generating it again", path)
            path.unlink()
        if not path.exists():
            todo.append(row)
    if not todo:
        return 0
    kwargs: dict[str, Any] = dict(steps=config.steps, scheduler=config.scheduler, height=config.resolution,
                                  width=config.resolution, batch_size=config.batch_size)
    if config.automemora_w is not None:
        adapters = list(active_lora_weights(model))
        adapter = config.automemora_adapter or (adapters[0] if adapters else "")
        if adapter not in adapters:
            raise InputError(f"AutoMemoRa needs an active LoRA adapter{f' named {adapter!r}' if adapter else ''}; "
                             f"active: {', '.join(adapters) or 'none'}")
    done = 0
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start:start + config.batch_size]
        args = dict(seeds=[r.seed for r in chunk], guidance=[r.guidance for r in chunk],
                    negative_prompt=config.negative_prompt, **kwargs)
        prompts = [r.prompt for r in chunk]
        if config.automemora_w is not None:
            images = generate_automemora(model, prompts, w=config.automemora_w, lora_adapter=adapter, **args)
        else:
            images = generate(model, prompts, **args)
        for row, pil in zip(chunk, tensor_to_pil(images)):
            save_image(pil, image_dir / row.image_name)
        done += len(chunk)
        report(callback, "evaluate", done, len(todo), info={"rows": len(rows), "batch": len(chunk)})
    return done


def _write_results(out_dir: Path, rows: Sequence[PromptRow], images: Sequence[Path], detection: DetectionResult,
                   settings: dict[str, Any]) -> tuple[Path, Path]:
    protocol = detection.protocol
    tag = "-".join(str(x) for x in (protocol.get("detector"), protocol.get("target") or protocol.get("protocol"))
                   if x not in (None, ""))
    tag = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)
    csv_path, json_path = out_dir / f"results-{tag}.csv", out_dir / f"results-{tag}.json"
    for p in (csv_path, json_path):
        if p.exists():
            logger.info("replacing %s (results are recomputed from the images on every run)", p)
    with atomic_path(csv_path, overwrite=True) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "prompt", "seed", "guidance", "image", "positive", "score", "label", "scores"])
            for row, image, det in zip(rows, images, detection.images):
                writer.writerow([row.id, row.prompt, row.seed, row.guidance, image.name, int(det.positive),
                                 f"{det.score:.6f}", det.label, json.dumps(det.scores)])
    summary = detection.to_dict()
    for det, row in zip(summary["results"], rows):
        det.update(id=row.id, prompt=row.prompt, seed=row.seed, guidance=row.guidance)
    rest = {k: v for k, v in summary.items() if k not in ("success_rate", "positives", "images")}
    save_json({"success_rate": detection.success_rate, "positives": detection.positives, "images": len(rows),
               "rows": {"first": rows[0].id, "last": rows[-1].id, "count": len(rows)}, "generation": settings,
               **rest}, json_path, overwrite=True)
    return csv_path, json_path


def evaluate(model: DiffusionModel, rows: Sequence[PromptRow], detector: Detector, out_dir: str | os.PathLike, *,
             config: EvaluationConfig | None = None, csv_path: str | os.PathLike | None = None,
             callback: ProgressCallback | None = None) -> EvaluationResult:
    """Generate (or reuse) one image per row in ``out_dir/images``, detect, write results; returns the summary.

    The model is used as it is: apply the LoRA(s) under test first (``memora.lora.load_lora`` /
    ``memora.guidance.apply_multi_memora``). ``config.automemora_w`` samples with AutoMemoRa guidance instead.
    Progress: ``report(callback, "evaluate", done, todo)`` per generated batch, then ``"detect"`` per batch.
    """
    config = config or EvaluationConfig()
    rows = list(rows)
    if not rows:
        raise InputError("no prompt rows to evaluate")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError(f"steps and batch_size must be >= 1 (got {config.steps}, {config.batch_size})")
    out_dir = Path(out_dir)
    settings = generation_settings(model, rows, config, csv_path)
    _check_run_folder(out_dir, settings)
    image_dir = out_dir / "images"
    image_dir.mkdir(exist_ok=True)
    with torch.inference_mode():
        generated = _generate_missing(model, rows, image_dir, config, callback)
    images = [image_dir / r.image_name for r in rows]
    detection = detector.detect_files(images, callback=callback)
    results_csv, results_json = _write_results(out_dir, rows, images, detection, settings)
    return EvaluationResult(out_dir, rows, images, generated, detection, results_csv, results_json)
