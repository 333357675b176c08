"""The frontend extension (``js/``) and the backend half of its channel (``NodeProgress`` in ``nodes/common.py``).

- every ``js/*.js`` parses as an ES module (``node --check`` on a ``.mjs`` copy: Node 20 does not report syntax
  errors of a ``.js`` ES module without a ``package.json`` saying ``"type": "module"``);
- ``tests/test_js_extension.mjs``: unit tests of ``js/memora_format.js`` and ``js/memora.js`` run in a fake ComfyUI
  (registration, widgets, loss curve, success rate, no console output);
- ``NodeProgress`` with a fake ``PromptServer``: the progress text (format, throttle, last step, cancel) and the
  ``memora.loss`` events, and that the JavaScript parser reads the Python text.

The JavaScript tests are skipped, with the reason, when ``node`` is not on PATH. No npm package and no browser are
needed. ``nodes/common.py`` is loaded from its path with stand-ins for ComfyUI's modules, as in
``test_node_helpers.py``, so no ComfyUI checkout is needed either.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JS_DIR = REPO / "js"
JS_FILES = sorted(JS_DIR.glob("*.js"))
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="`node` (Node.js) is not on PATH: the JavaScript checks need it")


# --------------------------------------------------------------------------------------------- JavaScript
def test_js_folder_has_the_extension():
    names = {f.name for f in JS_FILES}
    assert {"memora.js", "memora_format.js"} <= names
    source = (JS_DIR / "memora.js").read_text(encoding="utf-8")
    assert 'from "../../scripts/app.js"' in source and 'from "../../scripts/api.js"' in source
    assert 'name: EXTENSION' in source and 'const EXTENSION = "memora.ui"' in source


@needs_node
@pytest.mark.parametrize("path", JS_FILES, ids=[f.name for f in JS_FILES])
def test_js_file_parses(path, tmp_path):
    copy = tmp_path / (path.stem + ".mjs")
    shutil.copyfile(path, copy)
    run = subprocess.run([NODE, "--check", str(copy)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"{path.name} is not a valid ES module:\n{run.stderr}"


@needs_node
def test_js_extension_in_fake_comfyui():
    run = subprocess.run([NODE, str(REPO / "tests" / "test_js_extension.mjs"), str(JS_DIR)],
                         capture_output=True, text=True, timeout=120)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------------------------------ NodeProgress (Python)
class FakeServer:
    def __init__(self, fail: bool = False):
        self.client_id = "client-1"
        self.last_prompt_id = "prompt-1"
        self.texts: list[tuple[str, str, object]] = []
        self.events: list[tuple[str, dict, object]] = []
        self.fail = fail

    def send_progress_text(self, text, node_id, sid=None):
        if self.fail:
            raise RuntimeError("socket gone")
        self.texts.append((text, node_id, sid))

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data, sid))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def common(monkeypatch):
    """``nodes/common.py`` loaded with stand-ins for folder_paths, server, comfy.utils and comfy.model_management."""

    class InterruptProcessingException(BaseException):
        pass

    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.interrupt = False

    def throw_exception_if_processing_interrupted():
        if mm.interrupt:
            mm.interrupt = False
            raise InterruptProcessingException()

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    utils = types.ModuleType("comfy.utils")
    bars = []

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.node_id, self.updates = total, node_id, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, total, preview))

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    comfy.utils, comfy.model_management = utils, mm
    server = types.ModuleType("server")

    class PromptServer:
        instance = FakeServer()

    server.PromptServer = PromptServer
    folder_paths = types.ModuleType("folder_paths")
    for name, module in (("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", mm),
                         ("server", server), ("folder_paths", folder_paths)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("memora_test_nodes_common", REPO / "nodes" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clock = Clock()
    module.time = clock  # NodeProgress reads time.monotonic()
    return types.SimpleNamespace(module=module, server=PromptServer, mm=mm, bars=bars, clock=clock)


def _event(phase, step, total, loss=None):
    from memora.progress import ProgressEvent

    return ProgressEvent(phase, step, total, loss=loss)


def test_progress_text_format(common):
    P = common.module.NodeProgress
    assert P.format_text("train", 120, 500, 0.0123, 4.1) == "train 120/500 · loss 0.0123 · 4.1 it/s · ETA 1:33"
    assert P.format_text("invert", 12, 35) == "invert 12/35"
    assert P.format_text("evaluate", 8, 142, rate=0.25) == "evaluate 8/142 · 4.0 s/it · ETA 8:56"
    assert P.format_text("detect", 4, 4, rate=3.0, elapsed=1.2) == "detect 4/4 · 3.0 it/s · done in 0:01"
    assert (P.format_text("train", 7, 500, 0.1, 2.0, suffix="cancelled")
            == "train 7/500 · loss 0.1000 · 2.0 it/s · cancelled")
    assert P.format_duration(3723) == "1:02:03" and P.format_duration(29.4) == "0:29"
    assert P.format_loss(1.234e-5) == "1.234e-05" and P.format_loss(float("nan")) == "nan"


def test_progress_text_is_throttled_and_losses_all_arrive(common):
    server = common.server.instance
    progress = common.module.NodeProgress("9")
    for step in range(1, 101):  # 100 updates at 20 it/s: 5 seconds
        progress(_event("train", step, 100, loss=1.0 / step))
        common.clock.now += 0.05
    texts = [t for t, node, sid in server.texts]
    assert all(node == "9" and sid == "client-1" for _, node, sid in server.texts)
    assert 15 <= len(texts) <= 5 * 4 + 2, texts  # ~4 per second, plus the first and the last step
    assert texts[0] == "train 1/100 · loss 1.0000"
    assert texts[-1].startswith("train 100/100 · loss 0.0100 · 20.0 it/s · done in 0:05"), texts[-1]
    assert any(" · ETA 0:0" in t for t in texts)
    events = [data for name, data, sid in server.events if name == "memora.loss"]
    assert len(events) == len(texts)  # one loss event with each text (every text had new losses)
    steps = [p[0] for e in events for p in e["points"]]
    assert steps == list(range(1, 101))  # every loss, once, in order
    assert events[-1]["points"][-1] == [100, 0.01] and events[-1]["step"] == events[-1]["total"] == 100
    assert {e["node"] for e in events} == {"9"} and {e["prompt_id"] for e in events} == {"prompt-1"}
    assert all(e["phase"] == "train" for e in events)
    assert [u[0] for u in common.bars[0].updates] == list(range(1, 101))  # the bar still gets every step
    json.dumps(events)  # the websocket sends them as JSON


def test_progress_text_phases_without_loss(common):
    server = common.server.instance
    progress = common.module.NodeProgress("3")
    progress(_event("encode", 1, 1))
    for step in range(1, 36):
        progress(_event("invert", step, 35))
        common.clock.now += 1.0
    texts = [t for t, _, _ in server.texts]
    assert texts[0] == "encode 1/1"
    assert texts[1] == "invert 1/35"
    assert texts[-1] == "invert 35/35 · 1.0 it/s · done in 0:35"
    assert len(texts) == 1 + 35  # one step per second: never throttled
    assert not server.events  # no loss, no loss event
    assert len(common.bars) == 2


def test_progress_text_cancel_flushes_losses(common):
    server = common.server.instance
    progress = common.module.NodeProgress("9")
    with pytest.raises(common.mm.InterruptProcessingException):
        for step in range(1, 11):
            common.mm.interrupt = step == 7
            progress(_event("train", step, 500, loss=0.5))
            common.clock.now += 0.01  # fast: throttled
    texts = [t for t, _, _ in server.texts]
    assert texts[-1].startswith("train 7/500 · loss 0.5000") and texts[-1].endswith("cancelled")
    steps = [p[0] for _, data, _ in server.events for p in data["points"]]
    assert steps == list(range(1, 8))


def test_progress_text_needs_a_node_id_and_a_server(common):
    progress = common.module.NodeProgress(None)
    progress(_event("train", 1, 2, loss=0.1))
    assert not common.server.instance.texts and not common.server.instance.events
    assert len(common.bars) == 1  # the progress bar is still driven

    common.server.instance = None  # no PromptServer (outside ComfyUI's server)
    common.module.NodeProgress("1")(_event("detect", 1, 4))

    common.server.instance = FakeServer(fail=True)  # a failing socket never breaks the run
    progress = common.module.NodeProgress("1")
    for step in range(1, 5):
        progress(_event("detect", step, 4))

    quiet = common.module.NodeProgress("1", text=False)
    common.server.instance = FakeServer()
    quiet(_event("detect", 1, 4))
    assert not common.server.instance.texts


@needs_node
def test_js_parser_reads_the_python_text(common, tmp_path):
    P = common.module.NodeProgress
    texts = [P.format_text("train", 120, 500, 0.0123, 4.1), P.format_text("invert", 12, 35, rate=0.5),
             P.format_text("erase (ESD)", 50, 50, 1.234e-5, 9.0, elapsed=5.6),
             P.format_text("train", 7, 500, 0.1, 2.0, suffix="cancelled"), P.format_text("detect", 3, 4)]
    script = tmp_path / "parse.mjs"
    module = json.dumps((JS_DIR / "memora_format.js").as_uri())
    script.write_text(
        f"import {{ parseProgressText, formatLoss, formatDuration }} from {module};\n"
        "const texts = JSON.parse(process.argv[2]);\n"
        "console.log(JSON.stringify({parsed: texts.map(parseProgressText),\n"
        "  loss: [0.0123, 1.234e-5, 123456].map(formatLoss), duration: [29, 3723].map(formatDuration)}));\n",
        encoding="utf-8")
    run = subprocess.run([NODE, str(script), json.dumps(texts)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    parsed = out["parsed"]
    assert parsed[0] == {"phase": "train", "step": 120, "total": 500, "loss": 0.0123, "rate": 4.1, "eta": 93,
                         "done": None, "cancelled": False}
    assert parsed[1]["rate"] == 0.5 and parsed[1]["eta"] == 46 and parsed[1]["loss"] is None
    assert parsed[2]["phase"] == "erase (ESD)" and parsed[2]["loss"] == 1.234e-5 and parsed[2]["done"] == 6
    assert parsed[3]["cancelled"] is True and parsed[3]["eta"] is None
    assert parsed[4]["step"] == 3 and parsed[4]["total"] == 4
    assert out["loss"] == [P.format_loss(v) for v in (0.0123, 1.234e-5, 123456.0)]
    assert out["duration"] == [P.format_duration(v) for v in (29, 3723)]
