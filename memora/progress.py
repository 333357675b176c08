"""Progress reporting shared by every long engine loop.

Engine functions take ``callback: ProgressCallback | None`` and call it once per step. A callback may raise to
stop the work (ComfyUI's ``ProgressBar`` raises ``InterruptProcessingException`` when the user presses Cancel);
the engine then cleans up (training writes a valid partial LoRA) and lets the exception propagate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class ProgressEvent:
    phase: str  # "encode", "invert", "regenerate", "train", "generate", ...
    step: int  # steps done so far in this phase (1-based after the first step)
    total: int
    loss: Optional[float] = None
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def report(callback: ProgressCallback | None, phase: str, step: int, total: int, **kwargs) -> None:
    if callback is not None:
        callback(ProgressEvent(phase, step, total, **kwargs))


class TqdmProgress:
    """A ``ProgressCallback`` that draws one tqdm bar per phase (used by the CLI)."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self._bar = None
        self._phase = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if event.phase != self._phase or self._bar is None:
            self.close()
            self._phase = event.phase
            self._bar = tqdm(total=event.total, desc=event.phase, disable=self.disable, leave=True, dynamic_ncols=True)
        self._bar.n = event.step
        if event.loss is not None:
            self._bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        self._bar.refresh()
        if event.step >= event.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._phase = None
