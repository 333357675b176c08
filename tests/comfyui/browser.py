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
VIEWPORT = {"width": 1600, "height": 1200}  # 4:3, as the thumbnails
THUMBNAIL_SIZE = (400, 300)
THUMBNAIL_QUALITY = 85
UI_TIMEOUT_MS = 120_000  # one UI step (page start, a template load) on two busy CPU cores
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".gguf")
# User settings (the session server's user) written before every page start:
START_SETTINGS = {
    # a first run opens a blank graph and the template browser; a later start restores the last workflow or loads
    # the default graph (with models fetched from the internet): every start is a first run, deterministic
    "Comfy.TutorialCompleted": False,
    # LiteGraph draws nodes as bare boxes (no text) when the fitted zoom makes fonts smaller than 8 px: keep full
    # detail at every zoom so that the screenshots of large workflows show their nodes
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    # the minimap covers the bottom-right corner of the canvas in the screenshots
    "Comfy.Minimap.Visible": False,
}
# Model widgets of this pack whose values carry no models-folder prefix, so that neither the frontend (it knows the
# folders of core loaders only) nor the tests can tell where they live: (node type, widget) -> (ComfyUI folder
# key, "file" or "hf-folder": a Hugging Face model folder, listed when it holds a config.json).
PACK_MODEL_WIDGETS = {("MemoRaApplyLoRA", "lora_name"): ("loras", "file"),
                      ("MemoRaLoadDetector", "model_file"): ("concept_detectors", "hf-folder")}


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


_BLOCKED = re.compile(r"^(?:Connecting to '(?P<a>[^']+)' violates the following Content Security Policy directive"
                      r"|Fetch API cannot load (?P<b>\S+?)\.? Refused to connect because it violates the document's "
                      r"Content Security Policy)")


def _external_connection_blocked(entry: ConsoleEntry, server_url: str) -> bool:
    if entry.kind != "console.error":
        return False
    m = _BLOCKED.match(entry.text)
    if m:
        target = m.group("a") or m.group("b")
    elif entry.text.startswith("Failed to load resource: net::ERR_"):
        target = entry.url
    else:
        return False
    return bool(target) and urllib.parse.urlsplit(target).scheme in ("http", "https") \
        and not target.startswith(server_url + "/")


IGNORED_CONSOLE_ERRORS: tuple[IgnoreRule, ...] = (
    IgnoreRule(
        "connection to an external host blocked (offline test machine)",
        "Connections to hosts other than the ComfyUI server, refused by the server's Content Security Policy "
        "(connect-src 'self') or failing at the network level. Seen: when a workflow shows missing models, the "
        "frontend asks the Comfy registry https://api.comfy.org/comfy-nodes/<node type>/node and "
        "https://api.comfy.org/nodes?node_id=comfy-core which pack provides each node; it asks huggingface.co "
        "for model files that carry download URLs. Only the browser's own messages about such blocked or failed "
        "requests are ignored (the test records each one).",
        _external_connection_blocked),
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

    def save(self, page, name: str, public: bool = True,
             focus: tuple[float, float, float, float] | None = None) -> Path:
        """Screenshot the page; ``public=False`` keeps it in the tmp dir (no docs copy, no thumbnail). The thumbnail
        shows ``focus`` (a page-pixel box: the graph) when given, else the whole screenshot."""
        out_dir = self.dir if public else self.tmp_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"{name}.png"
        page.screenshot(path=str(png), animations="disabled")
        self.saved.append(png)
        if public and self.thumb_dir is not None:
            self.thumbnail(png, self.thumb_dir / f"{name}.jpg", focus)
        return png

    @staticmethod
    def thumbnail(png: Path, jpg: Path, focus: tuple[float, float, float, float] | None = None) -> Path:
        """A 400x300 JPEG (quality 85) of ``focus`` (plus a margin) widened to 4:3, or of the whole image."""
        from PIL import Image

        jpg.parent.mkdir(parents=True, exist_ok=True)
        tw, th = THUMBNAIL_SIZE
        with Image.open(png) as im:
            im = im.convert("RGB")
            w, h = im.size
            x0, y0, x1, y1 = focus if focus else (0, 0, w, h)
            margin = 0.04 * max(x1 - x0, y1 - y0) if focus else 0
            x0, y0, x1, y1 = max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)
            bw, bh = x1 - x0, y1 - y0
            if bw * th > bh * tw:  # widen the box to 4:3 around its centre, then keep it inside the image
                bh = min(h, bw * th / tw)
                bw = bh * tw / th
            else:
                bw = min(w, bh * tw / th)
                bh = bw * th / tw
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            left = min(max(0, cx - bw / 2), w - bw)
            top = min(max(0, cy - bh / 2), h - bh)
            box = tuple(round(v) for v in (left, top, left + bw, top + bh))
            im.crop(box).resize(THUMBNAIL_SIZE, Image.LANCZOS).save(jpg, "JPEG", quality=THUMBNAIL_QUALITY,
                                                                     optimize=True)
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
    missing_models: models.filter(c => c.isMissing !== false).map(c => ({
      name: c.name, directory: c.directory ?? null, nodeType: c.nodeType, widgetName: c.widgetName})),
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
# the view (zoom, offset) unchanged for 5 frames: fitting the view is animated
_VIEW_SETTLED_JS = """() => new Promise(resolve => {
  let last = null, same = 0;
  const tick = () => {
    const ds = app.canvas.ds, now = `${ds.scale},${ds.offset[0]},${ds.offset[1]}`;
    same = now === last ? same + 1 : 0;
    last = now;
    if (same >= 5) resolve(true); else requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})"""


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
        for setting, value in START_SETTINGS.items():
            self.server.post(f"/settings/{setting}", value)
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
        # custom-node packs are listed (once the template lists have loaded) under the collapsible "Extensions"
        # heading; its chevron points right while it is collapsed
        group = dialog.locator("h3", has_text=re.compile(r"^\s*extensions\s*$", re.IGNORECASE))
        group.wait_for(state="visible")
        if group.evaluate("h => !!h.parentElement.querySelector('.pi-chevron-right')"):
            group.click()
        dialog.get_by_role("button", name=category, exact=True).click()
        return dialog

    def open_template(self, name: str, category: str = PACK_NAME, expected_nodes: int | None = None) -> None:
        """Template browser -> ``category`` -> the ``name`` card; returns once ``app.loadGraphData`` (missing
        node / model / media checks included) has finished and a frame was drawn."""
        dialog = self._open_category(category)
        card = dialog.get_by_test_id(f"template-workflow-{name}")
        card.wait_for(state="visible")
        before = self.page.evaluate("() => window.__memoraLoads.finished")
        card.click()
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        try:
            self.page.wait_for_function("n => window.__memoraLoads.finished > n", arg=before, timeout=UI_TIMEOUT_MS)
        except PlaywrightTimeoutError as e:  # e.g. the template JSON did not load: logged, no graph loaded
            raise AssertionError(f"template {category}/{name}: no graph loaded within {UI_TIMEOUT_MS / 1000:.0f} s "
                                 f"({e.__class__.__name__}); console errors meanwhile:\n"
                                 + "\n".join(map(str, self.console.errors(self.console.phase)))) from None
        failed = self.page.evaluate("() => window.__memoraLoads.failed")
        assert not failed, f"loading the template {name!r} threw: {failed}"
        dialog.wait_for(state="hidden")
        self.close_properties_panel()  # if a previous session left it open: it narrows the canvas
        self.page.evaluate(_TWO_FRAMES_JS)
        if expected_nodes is not None:
            count = self.page.evaluate("() => app.graph.nodes.length")
            assert count == expected_nodes, \
                f"template {name!r}: {count} nodes in the graph, {expected_nodes} in the file"

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
        self.close_properties_panel()
        return details

    def close_properties_panel(self) -> None:
        panel = self.page.get_by_test_id("properties-panel")
        if panel.is_visible():
            self.page.get_by_role("button", name="Toggle properties panel").first.click()
            panel.wait_for(state="hidden")

    def api_prompt(self) -> dict:
        """The API-format prompt the frontend would queue for the current graph (``app.graphToPrompt``)."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

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
        """Info toasts ("Node definitions updated", ...) close by themselves after a second or so (error toasts
        stay: ``inspect`` reports them)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        try:
            self.page.wait_for_function(
                "() => !document.querySelector('.p-toast-message:not(.p-toast-message-error)')", timeout=timeout_ms)
        except PlaywrightTimeoutError:  # a toast that stays only spoils a screenshot; not an error of its own
            pass

    def fit_view(self) -> None:
        """The canvas toolbar's "Fit View" button (key "."): the whole graph in view."""
        self.page.get_by_role("button", name=re.compile(r"^Fit View")).click()
        self.page.evaluate(_VIEW_SETTLED_JS)

    # ------------------------------------------------------------------ screenshots
    def screenshot(self, name: str, public: bool = True) -> Path:
        """The whole window (the canvas fills it); the thumbnail shows the graph's bounding box."""
        self.page.evaluate(_VIEW_SETTLED_JS)
        return self.screenshots.save(self.page, name, public=public, focus=self.graph_box())

    def graph_box(self) -> tuple[float, float, float, float] | None:
        """The page-pixel box around all nodes and groups as drawn now (None when the graph is empty)."""
        box = self.page.evaluate("""() => {
          const c = app.canvas, rect = c.canvas.getBoundingClientRect();
          const rects = [...app.graph.nodes.map(n => n.boundingRect),
                         ...(app.graph.groups ?? []).map(g => g.boundingRect ?? g._bounding)].filter(Boolean);
          if (!rects.length) return null;
          const x0 = Math.min(...rects.map(r => r[0])), y0 = Math.min(...rects.map(r => r[1]));
          const x1 = Math.max(...rects.map(r => r[0] + r[2])), y1 = Math.max(...rects.map(r => r[1] + r[3]));
          const a = c.ds.convertOffsetToCanvas([x0, y0]), b = c.ds.convertOffsetToCanvas([x1, y1]);
          return [rect.left + a[0], rect.top + a[1], rect.left + b[0], rect.top + b[1]];  // CSS pixels
        }""")
        return tuple(box) if box else None

    def widget_names(self) -> dict[str, list[str]]:
        """Node id -> the names of its widgets, in the order the frontend fills them from ``widgets_values``."""
        return dict(self.page.evaluate(
            "() => app.graph.nodes.map(n => [String(n.id), (n.widgets ?? []).map(w => w.name)])"))

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
    """Empty stand-ins for the models a workflow names (SD 1.4, unlearned UNets, recovered LoRAs, detector
    folders), so that the frontend and the server see them installed; removed again by ``remove``. Nothing runs
    them."""

    def __init__(self, server, root: Path):
        self.server, self.root = server, root.resolve()
        self.created: list[Path] = []  # files and folders, in creation order
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
        widget = (candidate.get("nodeType"), candidate.get("widgetName"))
        if directory and directory in folders:
            path = Path(folders[directory]) / name
        elif rest and head in folders:
            path = Path(folders[head]) / rest
        elif widget in PACK_MODEL_WIDGETS and PACK_MODEL_WIDGETS[widget][1] == "file":
            path = Path(folders[PACK_MODEL_WIDGETS[widget][0]]) / name
        else:
            raise AssertionError(f"no models folder known for {candidate}; add its (node type, widget) to "
                                 "PACK_MODEL_WIDGETS in tests/comfyui/browser.py")
        assert name.lower().endswith(MODEL_SUFFIXES), f"not a model file name: {candidate}"
        return self._inside(path, candidate)

    def _inside(self, path: Path, what) -> Path:
        path = path.resolve()
        assert self.root in path.parents, f"{what} resolves outside the session folder: {path}"
        return path

    def create(self, candidates: list[dict]) -> list[Path]:
        """Empty files for the frontend's missing-model candidates."""
        return [p for p in (self._make(self.path_for(c)) for c in candidates) if p]

    def create_for(self, problem: "PromptProblem") -> Path | None:
        """A stand-in for a combo value of a pack model widget that is not installed here (None: not one)."""
        entry = PACK_MODEL_WIDGETS.get((problem.class_type, problem.input))
        if not problem.absent_option or entry is None or not isinstance(problem.value, str):
            return None
        key, kind = entry
        path = self._inside(Path(self.folders()[key]) / problem.value, problem)
        if kind == "hf-folder":  # a Hugging Face model folder: listed when it holds a config.json
            self._make(path, folder=True)
            return self._make(path / "config.json", text="{}")
        return self._make(path)

    def _make(self, path: Path, folder: bool = False, text: str = "") -> Path | None:
        if path.exists():
            return None
        for d in reversed(path.parents if not folder else (path, *path.parents)):
            if self.root in d.parents and not d.exists():
                d.mkdir()
                self.created.append(d)
        if not folder:
            path.write_text(text)
            self.created.append(path)
        return path

    def remove(self) -> None:
        for path in reversed(self.created):  # files and innermost folders first; a folder only when empty
            try:
                path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
            except OSError:
                pass
        self.created.clear()


# ====================================================================================== prompt check
@dataclass(frozen=True)
class PromptProblem:
    node_id: str
    class_type: str
    input: str | None
    value: object
    message: str
    absent_option: bool = False  # a combo value the server does not list (e.g. a model not installed here)

    def __str__(self) -> str:
        return f"node {self.node_id} ({self.class_type}): {self.message}"


def _input_spec(spec) -> tuple[object, dict]:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind, options


def prompt_problems(prompt: dict, object_info: dict) -> list[PromptProblem]:
    """Where the frontend's prompt disagrees with the server's node definitions: unknown node types, required
    inputs without a value, widget values of the wrong type, outside min/max or not among a combo's options
    (a shifted ``widgets_values`` list in a workflow file shows up here)."""
    problems = []
    for node_id, node in sorted(prompt.items(), key=lambda kv: str(kv[0])):
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if info is None:
            problems.append(PromptProblem(str(node_id), class_type, None, None, "unknown node type"))
            continue
        inputs = node.get("inputs", {})

        def problem(name, value, message, absent=False):
            problems.append(PromptProblem(str(node_id), class_type, name, value, message, absent))

        for section in ("required", "optional"):
            for name, spec in (info.get("input", {}).get(section) or {}).items():
                kind, options = _input_spec(spec)
                if name not in inputs:
                    if section == "required":
                        problem(name, None, f"required input {name!r} has no value and no link")
                    continue
                value = inputs[name]
                if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                    continue  # a link [node id, output index]
                choices = kind if isinstance(kind, list) else (options.get("options") if kind == "COMBO" else None)
                if choices is not None:
                    if value not in choices:
                        problem(name, value, f"{name}={value!r} is not one of its options {choices[:8]}"
                                + (" ..." if len(choices) > 8 else ""), absent=True)
                    continue
                ok = {"INT": isinstance(value, int) and not isinstance(value, bool),
                      "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
                      "BOOLEAN": isinstance(value, bool),
                      "STRING": isinstance(value, str)}.get(kind, True)
                if not ok:
                    problem(name, value, f"{name}={value!r} is not a {kind}")
                    continue
                if kind in ("INT", "FLOAT"):
                    low, high = options.get("min"), options.get("max")
                    if (low is not None and value < low) or (high is not None and value > high):
                        problem(name, value, f"{name}={value!r} outside [{low}, {high}]")
    return problems
