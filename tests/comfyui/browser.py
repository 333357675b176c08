"""A real headless Chromium driving the real ComfyUI frontend, for ``test_browser.py``.

Needs the ``playwright`` Python package (its bundled driver only: never ``playwright install``, the tests launch
the system Chromium, ``apt-get install chromium``) and a Chromium executable: ``MEMORA_CHROMIUM``, else
``chromium`` / ``chromium-browser`` / ``google-chrome`` on the PATH. ``browser_unavailable_reason()`` says what is
missing; the browser tests are skipped with that reason.

What the frontend (comfyui_frontend_package 1.49) shows, and how this module reads it:

- the template browser: the sidebar button ``button.templates-tab-button`` (aria-label "Templates") opens a
  dialog (``[role=dialog]`` holding ``[data-testid=template-filter-bar]``); custom-node packs are listed in its
  navigation under the collapsible "Extensions" heading, one ``role=button`` per pack, named after the folder
  in custom_nodes; each workflow is a card ``[data-testid=template-workflow-<file stem>]``. On a first run (the
  server-side setting ``Comfy.TutorialCompleted`` unset) the frontend opens that dialog by itself.
- load-time errors: a toast-like ``[data-testid=error-overlay]`` (title "Missing node: <type>" for one missing
  node type, "Missing nodes" for several, "<n> errors found" when several kinds mix) whose "View details"
  (``[data-testid=error-overlay-see-errors]``) opens the right-side panel (``[data-testid=properties-panel]``)
  with one ``section[data-testid=error-group-<kind>]`` per kind: ``missing-node``, ``missing-model``,
  ``missing-media``, ... The same facts are in the Pinia stores ``missingNodesError``, ``missingModel`` and
  ``missingMedia``; a node of a type the server does not define stays in the graph as a placeholder whose type
  is not in ``LiteGraph.registered_node_types``. ``LoadReport`` gathers all three views.
- the Run button ``[data-testid=queue-button]`` posts ``/api/prompt``; the outputs the UI received are in
  ``app.nodeOutputs`` and the Pinia ``execution`` store tracks the running job.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from comfy_testing import PACK_NAME, REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "workflows"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1200}  # 4:3, so the thumbnails are plain 400x300 reductions
THUMBNAIL_SIZE = (400, 300)
THUMBNAIL_QUALITY = 85
UI_TIMEOUT_MS = 120_000  # one UI step (page start, a template load) on two busy CPU cores
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".gguf")
# Model widgets of this pack whose values carry no models-folder prefix and that the frontend cannot place (it
# knows the folders of core loaders only): (node type, widget) -> ComfyUI folder key.
PACK_MODEL_WIDGET_FOLDERS = {("MemoRaApplyLoRA", "lora_name"): "loras"}


def workflow_files() -> list[Path]:
    """The pack's UI-format workflows, ``workflows/*.json``, in name order."""
    return sorted(WORKFLOWS_DIR.glob("*.json"))


# ========================================================================================= availability
def chromium_executable() -> str | None:
    explicit = os.environ.get("MEMORA_CHROMIUM", "").strip()
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def browser_unavailable_reason() -> str | None:
    """Why the browser tests cannot run here (``None``: they can)."""
    if importlib.util.find_spec("playwright") is None:
        return ("the playwright Python package is not installed in this environment (pip install playwright; "
                "no `playwright install` needed, the tests use the system Chromium)")
    if chromium_executable() is None:
        where = os.environ.get("MEMORA_CHROMIUM", "").strip()
        return (f"MEMORA_CHROMIUM={where} is not a file" if where else
                "no Chromium found (apt-get install chromium, or set MEMORA_CHROMIUM=/path/to/chromium)")
    return None


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS, headless=True)


# ============================================================================================ console
@dataclass(frozen=True)
class ConsoleEntry:
    phase: str  # what the test was doing: "startup", "open <name>", "run <name>", ...
    kind: str  # "console.error" or "pageerror"
    text: str
    url: str  # the source location (for a failed resource: the resource)

    def __str__(self) -> str:
        return f"[{self.phase}] {self.kind}: {self.text}" + (f"  ({self.url})" if self.url else "")


@dataclass(frozen=True)
class IgnoreRule:
    name: str
    why: str
    matches: Callable[[ConsoleEntry, str], bool]  # (entry, server url)


_HTTP_404 = "Failed to load resource: the server responded with a status of 404"


def _same_origin_path(entry: ConsoleEntry, server_url: str) -> tuple[str, dict] | None:
    if not entry.url.startswith(server_url + "/"):
        return None
    parts = urllib.parse.urlsplit(entry.url)
    return parts.path, urllib.parse.parse_qs(parts.query)


def _optional_user_file_404(entry: ConsoleEntry, server_url: str) -> bool:
    where = _same_origin_path(entry, server_url)
    if entry.kind != "console.error" or not entry.text.startswith(_HTTP_404) or where is None:
        return False
    path, query = where
    return (path in ("/user.css", "/api/userdata/user.css", "/api/userdata/comfy.templates.json")
            or (path == "/api/userdata" and query.get("dir", [""])[0] in ("workflows", "subgraphs"))
            or path.startswith("/api/settings/"))


def _missing_thumbnail_404(entry: ConsoleEntry, server_url: str) -> bool:
    where = _same_origin_path(entry, server_url)
    if entry.kind != "console.error" or not entry.text.startswith(_HTTP_404) or where is None:
        return False
    m = re.fullmatch(r"/api/workflow_templates/([^/]+)/([^/]+)\.(jpg|jpeg|png|webp)", where[0])
    return bool(m) and urllib.parse.unquote(m.group(1)) == PACK_NAME \
        and not (WORKFLOWS_DIR / urllib.parse.unquote(f"{m.group(2)}.{m.group(3)}")).exists()


IGNORED_CONSOLE_ERRORS: tuple[IgnoreRule, ...] = (
    IgnoreRule(
        "optional per-user file absent (HTTP 404)",
        "On a fresh user directory the frontend asks the server for optional files: /user.css and "
        "/api/userdata/user.css (a user stylesheet), /api/userdata/comfy.templates.json (saved node templates), "
        "/api/userdata?dir=workflows|subgraphs (saved workflows / subgraph blueprints) and /api/settings/<id> "
        "(settings never set). The server answers 404, which Chromium logs as a console error for every 4xx "
        "resource; the frontend handles them.",
        _optional_user_file_404),
    IgnoreRule(
        "template thumbnail not shipped yet (HTTP 404)",
        f"The template browser asks for /api/workflow_templates/{PACK_NAME}/<name>.jpg and shows a default "
        "picture when it is absent. Ignored only while workflows/<name>.jpg does not exist in the repository "
        "(the thumbnails are made from this test's screenshots); the test warns about it.",
        _missing_thumbnail_404),
    IgnoreRule(
        "frontend start-up: graph read before it exists",
        "The frontend itself (settingStore, ComfyApp.rootGraph getter) logs 'ComfyApp graph accessed before "
        "initialization' once while it boots, with no custom node involved; ignored in the start-up phase only.",
        lambda e, _: e.phase == "startup" and e.kind == "console.error"
        and e.text == "ComfyApp graph accessed before initialization"),
)


class ConsoleLog:
    """Every console error and uncaught page exception of a page, tagged with the current ``phase``."""

    def __init__(self, page, server_url: str, rules: tuple[IgnoreRule, ...] = IGNORED_CONSOLE_ERRORS):
        self.server_url, self.rules = server_url, rules
        self.phase = "startup"
        self.entries: list[ConsoleEntry] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_pageerror)

    def _on_console(self, message) -> None:
        if message.type == "error":
            location = message.location or {}
            self.entries.append(ConsoleEntry(self.phase, "console.error", message.text, location.get("url", "")))

    def _on_pageerror(self, error) -> None:
        text = f"{getattr(error, 'name', '') or 'Error'}: {getattr(error, 'message', '') or error}"
        stack = getattr(error, "stack", "") or ""
        self.entries.append(ConsoleEntry(self.phase, "pageerror", text + ("\n" + stack if stack else ""), ""))

    def ignored_by(self, entry: ConsoleEntry) -> IgnoreRule | None:
        return next((rule for rule in self.rules if rule.matches(entry, self.server_url)), None)

    def errors(self, phase: str | None = None) -> list[ConsoleEntry]:
        """The entries no rule explains (of one phase, or of all)."""
        return [e for e in self.entries if (phase is None or e.phase == phase) and self.ignored_by(e) is None]

    def ignored(self, phase: str | None = None) -> list[tuple[ConsoleEntry, str]]:
        return [(e, rule.name) for e in self.entries if (phase is None or e.phase == phase)
                for rule in [self.ignored_by(e)] if rule is not None]


# ========================================================================================= screenshots
class ScreenshotSink:
    """``<name>.png`` into pytest's tmp dir, or into ``MEMORA_SCREENSHOT_DIR`` when set; with
    ``MEMORA_THUMBNAIL_DIR`` set, also a ``<name>.jpg`` thumbnail (400x300, JPEG quality 85) there."""

    def __init__(self, tmp_dir: Path):
        shots = os.environ.get("MEMORA_SCREENSHOT_DIR", "").strip()
        thumbs = os.environ.get("MEMORA_THUMBNAIL_DIR", "").strip()
        self.dir = Path(shots).expanduser() if shots else tmp_dir
        self.thumb_dir = Path(thumbs).expanduser() if thumbs else None
        self.tmp_dir = tmp_dir
        self.saved: list[Path] = []

    def save(self, locator, name: str, public: bool = True) -> Path:
        """Screenshot ``locator``; ``public=False`` keeps it in the tmp dir (no docs copy, no thumbnail)."""
        out_dir = self.dir if public else self.tmp_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"{name}.png"
        locator.screenshot(path=str(png), animations="disabled")
        self.saved.append(png)
        if public and self.thumb_dir is not None:
            self.thumbnail(png, self.thumb_dir / f"{name}.jpg")
        return png

    @staticmethod
    def thumbnail(png: Path, jpg: Path) -> Path:
        from PIL import Image

        jpg.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(png) as im:
            im = im.convert("RGB")
            w, h = im.size
            tw, th = THUMBNAIL_SIZE
            if w * th > h * tw:  # wider than 4:3: crop the sides
                nw = round(h * tw / th)
                im = im.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
            elif w * th < h * tw:
                nh = round(w * th / tw)
                im = im.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
            im.resize(THUMBNAIL_SIZE, Image.LANCZOS).save(jpg, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        return jpg


# ========================================================================================= load report
@dataclass
class LoadReport:
    """What the frontend reports about the graph it just loaded."""

    node_count: int
    missing_node_types: list[str]  # Pinia missingNodesError
    missing_models: list[dict]  # Pinia missingModel: {name, directory, nodeType, widgetName}
    missing_media: list  # Pinia missingMedia
    unregistered_types: list[str]  # graph nodes whose type the frontend has no definition for
    overlay: str | None  # text of the error overlay, None when none is shown
    error_groups: dict[str, str] = field(default_factory=dict)  # "View details" panel: kind -> text
    error_toasts: list[str] = field(default_factory=list)

    @property
    def missing_nodes_shown(self) -> bool:
        """Does the UI show a missing-node error (overlay title or a missing-node group in the details)?"""
        return bool((self.overlay and self.overlay.startswith(("Missing node", "Missing nodes")))
                    or "missing-node" in self.error_groups)

    @property
    def has_missing_nodes(self) -> bool:
        return self.missing_nodes_shown or bool(self.missing_node_types) or bool(self.unregistered_types)

    @property
    def clean(self) -> bool:
        return not (self.has_missing_nodes or self.missing_models or self.missing_media or self.overlay
                    or self.error_groups or self.error_toasts)

    def describe(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items()}, indent=1)


_STATE_JS = """() => {
  const pinia = document.querySelector('#vue-app')?.__vue_app__?.config?.globalProperties?.$pinia;
  const store = id => pinia?._s?.get(id);
  const plain = v => v == null ? null : JSON.parse(JSON.stringify(v));
  const missingNodes = store('missingNodesError')?.missingNodesError?.nodeTypes ?? [];
  const models = store('missingModel')?.missingModelCandidates ?? [];
  const registered = window.LiteGraph?.registered_node_types ?? {};
  return {
    pinia: !!pinia,
    node_count: app.graph.nodes.length,
    missing_node_types: missingNodes.map(t => typeof t === 'string' ? t : t.type),
    missing_models: models.filter(c => c.isMissing !== false).map(c => ({name: c.name, directory: c.directory ?? null,
                                                                          nodeType: c.nodeType, widgetName: c.widgetName})),
    missing_media: plain(store('missingMedia')?.missingMediaCandidates) ?? [],
    unregistered_types: app.graph.nodes.filter(n => !(n.type in registered) && !n.isSubgraphNode?.()).map(n => n.type),
  };
}"""

_INSTRUMENT_JS = """() => {
  if (window.__memoraLoads) return;
  const loads = window.__memoraLoads = {started: 0, finished: 0, failed: []};
  const original = app.loadGraphData;
  app.loadGraphData = async function (...args) {
    loads.started++;
    try { return await original.apply(this, args); }
    catch (e) { loads.failed.push(String(e)); throw e; }
    finally { loads.finished++; }
  };
}"""

_TWO_FRAMES_JS = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"


# ============================================================================================ frontend
class ComfyFrontend:
    """One page of the ComfyUI frontend, driven like a user: the template browser, the error overlay, Run."""

    def __init__(self, page, server, screenshots: ScreenshotSink):
        self.page, self.server, self.screenshots = page, server, screenshots
        self.console = ConsoleLog(page, server.url)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Open the app as a first-time user (the frontend then opens the template browser by itself) and wait
        until it is ready: app booted, graph and canvas exist, the sidebar shows, the template browser is up."""
        # A first run opens a blank graph and the template browser; a later one restores the last workflow or
        # loads the default graph (with models from the internet). Make every start a first run: deterministic.
        self.server.post("/settings/Comfy.TutorialCompleted", False)
        page = self.page
        page.set_default_timeout(UI_TIMEOUT_MS)
        self.console.phase = "startup"
        page.goto(self.server.url + "/", wait_until="domcontentloaded")
        page.wait_for_function("() => !!(window.app && window.app.vueAppReady && window.app.isGraphReady "
                               "&& window.app.canvas && window.LiteGraph)", timeout=UI_TIMEOUT_MS)
        page.locator("#graph-canvas").wait_for(state="visible")
        self.templates_button.wait_for(state="visible")
        self.templates_dialog.wait_for(state="visible")  # opened by the frontend on a first run
        page.evaluate(_INSTRUMENT_JS)
        self.console.phase = "ready"

    # ------------------------------------------------------------------ template browser
    @property
    def templates_button(self):
        return self.page.locator("button.templates-tab-button")

    @property
    def templates_dialog(self):
        return self.page.locator('[role="dialog"]:has([data-testid="template-filter-bar"])')

    def open_templates(self):
        dialog = self.templates_dialog
        if not dialog.is_visible():
            self.templates_button.click()
            dialog.wait_for(state="visible")
        return dialog

    def template_names(self, category: str = PACK_NAME) -> list[str]:
        """The workflow cards the template browser shows for ``category`` (leaves the dialog open)."""
        dialog = self._open_category(category)
        cards = dialog.locator('[data-testid^="template-workflow-"]')
        cards.first.wait_for(state="visible")
        return sorted(c.get_attribute("data-testid")[len("template-workflow-"):] for c in cards.all())

    def _open_category(self, category: str):
        dialog = self.open_templates()
        entry = dialog.get_by_role("button", name=category, exact=True)
        if not entry.is_visible():  # the "Extensions" group is collapsible
            dialog.locator("h3", has_text=re.compile(r"^\s*Extensions\s*$")).click()
        entry.click()
        return dialog

    def open_template(self, name: str, category: str = PACK_NAME, expected_nodes: int | None = None) -> None:
        """Template browser -> ``category`` -> the ``name`` card; returns once ``app.loadGraphData`` (missing
        node / model / media checks included) has finished and a frame was drawn."""
        dialog = self._open_category(category)
        card = dialog.get_by_test_id(f"template-workflow-{name}")
        card.wait_for(state="visible")
        before = self.page.evaluate("() => window.__memoraLoads.finished")
        card.click()
        self.page.wait_for_function("n => window.__memoraLoads.finished > n", arg=before, timeout=UI_TIMEOUT_MS)
        failed = self.page.evaluate("() => window.__memoraLoads.failed")
        assert not failed, f"loading the template {name!r} threw: {failed}"
        dialog.wait_for(state="hidden")
        self.page.evaluate(_TWO_FRAMES_JS)
        if expected_nodes is not None:
            count = self.page.evaluate("() => app.graph.nodes.length")
            assert count == expected_nodes, f"template {name!r}: {count} nodes in the graph, {expected_nodes} in the file"

    # ------------------------------------------------------------------ what the UI reports
    def inspect(self) -> LoadReport:
        """The load-time errors as the stores, the graph and the UI (overlay and its "View details" panel) show
        them. Opens and closes the details panel when the overlay is shown; leaves the overlay as it is."""
        state = self.page.evaluate(_STATE_JS)
        assert state.pop("pinia"), "the frontend's Pinia stores are not reachable (#vue-app.__vue_app__)"
        report = LoadReport(overlay=None, **state)
        overlay = self.page.get_by_test_id("error-overlay")
        if overlay.is_visible():
            report.overlay = " ".join(overlay.inner_text().split())
            report.error_groups = self._error_details()
        report.error_toasts = [" ".join(t.split()) for t in
                               self.page.locator(".p-toast-message-error").all_inner_texts()]
        return report

    def _error_details(self) -> dict[str, str]:
        page = self.page
        page.get_by_test_id("error-overlay-see-errors").click()
        panel = page.get_by_test_id("properties-panel")
        groups = panel.locator('section[data-testid^="error-group-"]')
        groups.first.wait_for(state="visible")
        details = {g.get_attribute("data-testid")[len("error-group-"):]: " ".join(g.inner_text().split())
                   for g in groups.all()}
        page.get_by_role("button", name="Toggle properties panel").first.click()
        panel.wait_for(state="hidden")
        return details

    def dismiss_error_overlay(self) -> None:
        overlay = self.page.get_by_test_id("error-overlay")
        if overlay.is_visible():
            self.page.get_by_test_id("error-overlay-dismiss").click()
            overlay.wait_for(state="hidden")

    def refresh_node_definitions(self) -> None:
        """What the R key does: reload the node definitions (model lists) and re-check missing models."""
        self.page.evaluate("() => app.extensionManager.command.execute('Comfy.RefreshNodeDefinitions')")
        self.wait_for_toasts_to_close()

    def wait_for_toasts_to_close(self, timeout_ms: int = 30_000) -> None:
        """Info toasts ("Node definitions updated", ...) close by themselves after a second or so."""
        self.page.wait_for_function("() => !document.querySelector('.p-toast-message:not(.p-toast-message-error)')",
                                    timeout=timeout_ms)

    # ------------------------------------------------------------------ screenshots
    def screenshot(self, name: str, public: bool = True) -> Path:
        self.page.evaluate(_TWO_FRAMES_JS)
        return self.screenshots.save(self.page.locator("#graph-canvas"), name, public=public)

    # ------------------------------------------------------------------ run
    def queue(self) -> dict:
        """Click Run; returns the server's answer to the frontend's ``POST /api/prompt``."""
        with self.page.expect_response(lambda r: urllib.parse.urlsplit(r.url).path == "/api/prompt"
                                       and r.request.method == "POST") as response:
            self.page.get_by_test_id("queue-button").click()
        assert response.value.ok, f"POST /api/prompt -> HTTP {response.value.status}: {response.value.text()[:4000]}"
        return response.value.json()

    def wait_until_idle(self, prompt_id: str, timeout_ms: int = UI_TIMEOUT_MS) -> None:
        """The UI saw the job end: the execution store holds no active or queued job for it."""
        self.page.wait_for_function(
            """id => { const s = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia
                         ._s.get('execution');
                       return s.activeJobId == null && !(id in (s.queuedJobs ?? {})); }""",
            arg=prompt_id, timeout=timeout_ms)

    def wait_for_node_outputs(self, outputs: dict, timeout_ms: int = UI_TIMEOUT_MS) -> None:
        """The UI received every node's images (``app.nodeOutputs``) and the previews finished loading."""
        expected = {node_id: len(out.get("images", [])) for node_id, out in outputs.items()}
        self.page.wait_for_function(
            """expected => Object.entries(expected).every(([id, n]) => {
                 const got = app.nodeOutputs?.[id];
                 if (!got || (got.images ?? []).length < n) return false;
                 const node = app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);
                 return !node?.imgs || node.imgs.every(img => img.complete);
               })""",
            arg=expected, timeout=timeout_ms)


# ========================================================================================= stand-ins
class ModelStandIns:
    """Empty files standing in for the models a workflow names (SD 1.4, unlearned UNets, recovered LoRAs), so
    that the frontend sees them installed; removed again by ``remove``. Nothing runs them."""

    def __init__(self, server, root: Path):
        self.server, self.root = server, root.resolve()
        self.created: list[Path] = []
        self.created_dirs: list[Path] = []
        self._folders: dict[str, str] | None = None

    def folders(self) -> dict[str, str]:
        if self._folders is None:
            self._folders = {f["name"]: f["folders"][0] for f in self.server.get("/experiment/models")}
        return self._folders

    def path_for(self, candidate: dict) -> Path:
        """Where the file of a frontend missing-model candidate goes: its ``directory`` (core loaders), else the
        models-folder prefix of its name ("checkpoints/...", "unlearned/..."), else the pack's widget map."""
        name, directory = candidate["name"], candidate.get("directory")
        folders = self.folders()
        head, _, rest = name.partition("/")
        if directory and directory in folders:
            path = Path(folders[directory]) / name
        elif rest and head in folders:
            path = Path(folders[head]) / rest
        elif (candidate.get("nodeType"), candidate.get("widgetName")) in PACK_MODEL_WIDGET_FOLDERS:
            path = Path(folders[PACK_MODEL_WIDGET_FOLDERS[(candidate["nodeType"], candidate["widgetName"])]]) / name
        else:
            raise AssertionError(f"no models folder known for {candidate}; add its (node type, widget) to "
                                 "PACK_MODEL_WIDGET_FOLDERS in tests/comfyui/browser.py")
        path = path.resolve()
        assert self.root in path.parents, f"{candidate} resolves outside the session folder: {path}"
        assert path.name.lower().endswith(MODEL_SUFFIXES), f"not a model file name: {candidate}"
        return path

    def create(self, candidates: list[dict]) -> list[Path]:
        made = []
        for candidate in candidates:
            path = self.path_for(candidate)
            if path.exists():
                continue
            missing_dirs = [d for d in reversed(path.parents) if self.root in d.parents and not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.created_dirs.extend(missing_dirs)
            path.touch()
            self.created.append(path)
            made.append(path)
        return made

    def remove(self) -> None:
        for path in reversed(self.created):
            path.unlink(missing_ok=True)
        for d in reversed(self.created_dirs):  # innermost first; only what is still empty
            try:
                d.rmdir()
            except OSError:
                pass
        self.created.clear()
        self.created_dirs.clear()
