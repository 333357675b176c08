"""The pack in a real browser: headless Chromium drives the real ComfyUI frontend of the session's server.

Every ``workflows/*.json`` is opened from the template browser the way a user does it (Templates -> Extensions
-> ComfyUI-MemoRa -> the card) and must load with no missing node and no console error; with the models it
names in place (empty stand-in files: this test environment has no SD 1.4) it must show no error at all, and the
prompt the frontend builds from it must pass the server's node definitions (types, ranges, combo options: a
``widgets_values`` list shifted against the widgets shows up here). A screenshot of each is saved. Then the toy
workflow is queued with the Run button and must finish with outputs, which the UI must show.

Screenshots: pytest's tmp dir, or ``MEMORA_SCREENSHOT_DIR`` (``<name>.png``); with ``MEMORA_THUMBNAIL_DIR`` also
``<name>.jpg`` thumbnails (400x300). ``MEMORA_BROWSER_RUN_TIMEOUT`` (seconds, default 900) bounds the toy run.
Needs ``playwright`` (pip) and a system Chromium; skipped with the reason otherwise (see ``browser.py``).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import warnings

import pytest

from browser import (IGNORED_CONSOLE_ERRORS, VIEWPORT, WORKFLOWS_DIR, ComfyFrontend, ModelStandIns,
                     ScreenshotSink, browser_unavailable_reason, launch_chromium, prompt_problems, workflow_files)
from comfy_testing import PACK_NAME

_REASON = browser_unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

WORKFLOWS = workflow_files()
RUN_TIMEOUT = float(os.environ.get("MEMORA_BROWSER_RUN_TIMEOUT", "900"))
PROBE_CATEGORY = "memora-browser-probe"  # a template category injected into the probe page only
PROBE_NODE_TYPE = "MemoRaProbeNoSuchNode"
PROBE_MODEL = "memora_probe_missing.safetensors"


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> ScreenshotSink:
    return ScreenshotSink(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def stand_ins(comfy_server, comfy_dirs):
    """Empty model files for the names the workflows use; removed after this module (other tests list models)."""
    models = ModelStandIns(comfy_server, comfy_dirs.base)
    yield models
    models.remove()


@pytest.fixture(scope="module")
def frontend(chromium, comfy_server, screenshots, stand_ins):
    """One page for the whole module, started as a first-time user."""
    context = chromium.new_context(viewport=VIEWPORT)
    try:
        ui = ComfyFrontend(context.new_page(), comfy_server, screenshots)
        ui.start()
        yield ui
    finally:
        context.close()


def _node_definitions(server, prompt: dict) -> dict:
    definitions = {}
    for class_type in sorted({n["class_type"] for n in prompt.values()}):
        definitions.update(server.get(f"/object_info/{class_type}"))  # {} for a type the server lacks
    return definitions


def _widget_hint(path, frontend, problems) -> str:
    """The frontend fills a node's widgets from ``widgets_values`` in order; a seed INT gets a
    ``control_after_generate`` widget right after it, whose value ("fixed", "randomize", ...) the list must hold
    too. Show both lists for the nodes in question."""
    ids = {p.node_id for p in problems}
    names = frontend.widget_names()
    lines = []
    for node in json.loads(path.read_text())["nodes"]:
        if str(node["id"]) in ids:
            lines.append(f"  node {node['id']} ({node['type']}):\n    widgets in the UI : {names.get(str(node['id']))}"
                         f"\n    widgets_values    : {node.get('widgets_values')}")
    return ("\nwidgets_values are assigned to the widgets in order (a seed is followed by its "
            "control_after_generate value):\n" + "\n".join(lines)) if lines else ""


def _errors_text(entries) -> str:
    rules = "\n".join(f"  - {r.name}" for r in IGNORED_CONSOLE_ERRORS)
    return "\n".join(str(e) for e in entries) + f"\n(ignored only: \n{rules})"


# ================================================================================================ tests
def test_frontend_starts_without_console_errors(frontend):
    assert not frontend.console.errors("startup") + frontend.console.errors("ready"), \
        _errors_text(frontend.console.errors("startup") + frontend.console.errors("ready"))


def test_template_browser_lists_every_workflow(frontend, comfy_server):
    """The server serves workflows/ as the pack's templates and the template browser shows a card for each."""
    stems = sorted(p.stem for p in WORKFLOWS)
    assert stems, f"no workflows in {WORKFLOWS_DIR}"
    assert sorted(comfy_server.get("/workflow_templates").get(PACK_NAME, [])) == stems
    assert frontend.template_names(PACK_NAME) == stems
    missing = [s for s in stems if not (WORKFLOWS_DIR / f"{s}.jpg").exists()]
    if missing:
        warnings.warn(f"no template thumbnail (workflows/<name>.jpg) for {missing}")


def _probe_workflow(with_missing_model: bool) -> dict:
    """Core EmptyImage -> a node type nobody defines; optionally a checkpoint loader naming an absent file."""
    def widget_input(name):
        return {"name": name, "type": "INT", "widget": {"name": name}, "link": None}

    def node(node_id, node_type, pos, inputs, outputs, widgets, order):
        return {"id": node_id, "type": node_type, "pos": pos, "size": [300, 120], "flags": {}, "order": order,
                "mode": 0, "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": node_type},
                "widgets_values": widgets}

    nodes = [node(1, "EmptyImage", [50, 50], [widget_input(n) for n in ("width", "height", "batch_size", "color")],
                  [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], [64, 64, 1, 0], 0),
             node(2, PROBE_NODE_TYPE, [450, 50], [{"name": "images", "type": "IMAGE", "link": 1}], [], [], 1)]
    if with_missing_model:
        nodes.append(node(3, "CheckpointLoaderSimple", [50, 300], [],
                          [{"name": t, "type": t, "links": None} for t in ("MODEL", "CLIP", "VAE")],
                          [PROBE_MODEL], 2))
    return {"last_node_id": len(nodes), "last_link_id": 1, "nodes": nodes, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 90, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_missing_node_detection_works(chromium, comfy_server, screenshots):
    """Proves the checks the workflow test relies on: broken workflows, served as templates of an extra category
    (injected into this page's template list), opened through the same UI path, are reported as missing nodes by
    the overlay, its details panel, the store and the graph; and the console collector sees errors."""
    probes = {"missing_node": _probe_workflow(False), "missing_node_and_model": _probe_workflow(True)}
    url = comfy_server.url
    context = chromium.new_context(viewport=VIEWPORT)
    try:
        def listing(route):
            response = route.fetch()
            route.fulfill(response=response, json={**response.json(), PROBE_CATEGORY: list(probes)})

        context.route(f"{url}/api/workflow_templates", listing)
        context.route(f"{url}/api/workflow_templates/{PROBE_CATEGORY}/*.json",
                      lambda route: route.fulfill(json=probes[route.request.url.rsplit("/", 1)[1][:-len(".json")]]))
        jpeg = _tiny_jpeg()
        context.route(f"{url}/api/workflow_templates/{PROBE_CATEGORY}/*.jpg",
                      lambda route: route.fulfill(body=jpeg, content_type="image/jpeg"))
        page = context.new_page()
        ui = ComfyFrontend(page, comfy_server, screenshots)
        ui.start()

        ui.console.phase = "collector self-test"
        with page.expect_console_message(lambda m: m.type == "error" and "memora console probe" in m.text):
            with page.expect_event("pageerror"):
                page.evaluate("() => { console.error('memora console probe');"
                              " setTimeout(() => { throw new Error('memora pageerror probe'); }, 0); }")
        seen = ui.console.errors("collector self-test")
        assert [e.kind for e in seen] == ["console.error", "pageerror"], seen
        assert "memora pageerror probe" in seen[1].text

        for name, workflow in probes.items():
            ui.console.phase = f"open {name}"
            ui.open_template(name, category=PROBE_CATEGORY, expected_nodes=len(workflow["nodes"]))
            report = ui.inspect()
            ui.screenshot(f"probe_{name}", public=False)
            assert report.missing_node_types == [PROBE_NODE_TYPE], report.describe()
            assert report.unregistered_types == [PROBE_NODE_TYPE], report.describe()
            assert report.missing_nodes_shown and report.has_missing_nodes and not report.clean, report.describe()
            assert PROBE_NODE_TYPE in report.error_groups.get("missing-node", ""), report.describe()
            if name == "missing_node":
                assert report.overlay.startswith(f"Missing node: {PROBE_NODE_TYPE}"), report.describe()
            else:  # two kinds of error: a generic overlay title, the kinds are in the details panel
                assert re.match(r"\d+ errors found", report.overlay), report.describe()
                assert PROBE_MODEL in report.error_groups.get("missing-model", ""), report.describe()
                assert [m["name"] for m in report.missing_models] == [PROBE_MODEL], report.describe()
    finally:
        context.close()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_from_template_browser(frontend, stand_ins, path, record_property):
    name = path.stem
    expected_nodes = len(json.loads(path.read_text())["nodes"])
    console = frontend.console
    phase = console.phase = f"open {name}"
    started = time.monotonic()
    frontend.open_template(name, expected_nodes=expected_nodes)
    report = frontend.inspect()
    assert not report.has_missing_nodes, f"{name}: missing nodes\n{report.describe()}"
    assert not console.errors(phase), f"{name}: console errors\n{_errors_text(console.errors(phase))}"
    phases = [phase]
    if not report.clean:
        # This environment has none of the real models (SD 1.4, unlearned UNets, recovered LoRAs); anything
        # but missing models is an error of the workflow. Install stand-ins, refresh (R), reopen the template.
        record_property("missing_models", report.missing_models)
        first_missing_models = report.missing_models
        assert report.missing_models and not report.missing_media and not report.error_toasts \
            and set(report.error_groups) <= {"missing-model"}, f"{name}: load errors\n{report.describe()}"
        stand_ins.create(report.missing_models)
        phase = console.phase = f"open {name} (models in place)"
        phases.append(phase)
        frontend.refresh_node_definitions()
        frontend.open_template(name, expected_nodes=expected_nodes)
        report = frontend.inspect()
        assert report.clean, f"{name}: errors with its models in place\n{report.describe()}"
    shot = frontend.screenshot(name)  # saved even when a check below fails
    prompt = frontend.api_prompt()
    problems = prompt_problems(prompt, _node_definitions(frontend.server, prompt))
    placed = [p for p in map(stand_ins.create_for, problems) if p]
    if placed:  # pack model values the frontend does not check (a detector folder): stand-ins, check again
        problems = prompt_problems(prompt, _node_definitions(frontend.server, prompt))
    assert not problems, f"{name}: the prompt the frontend builds from it is invalid:\n" \
        + "\n".join(map(str, problems)) + _widget_hint(path, frontend, problems)
    errors = [e for p in phases for e in console.errors(p)]
    assert not errors, f"{name}: console errors\n{_errors_text(errors)}"
    ignored = [f"{rule}: {e.text[:160]} ({e.url})" for p in phases for e, rule in console.ignored(p)]
    record_property("ignored_console_errors", ignored)
    seconds = round(time.monotonic() - started, 1)
    record_property("seconds", seconds)
    print(f"{name}: opened cleanly in {seconds} s; {len(prompt)} prompt nodes; screenshot {shot}")
    if len(phases) > 1:
        print(f"  models it names, missing here, replaced by empty stand-ins: "
              f"{sorted({m['name'] for m in first_missing_models})}")
    if placed:
        print(f"  stand-ins for model values the frontend does not check: {[str(p) for p in placed]}")
    for line in ignored:
        print(f"  ignored console error: {line}")


@pytest.mark.skipif(not (WORKFLOWS_DIR / "toy.json").exists(), reason="workflows/toy.json does not exist")
def test_toy_workflow_runs_from_the_browser(frontend, comfy_server, comfy_dirs, record_property):
    """Open toy from the template browser, press Run, wait for the server to finish it; every output node of
    the workflow has outputs in /history (the preview images exist on disk) and the UI shows them."""
    path = WORKFLOWS_DIR / "toy.json"
    workflow = json.loads(path.read_text())
    console = frontend.console
    console.phase = "open toy for the run"
    frontend.open_template("toy", expected_nodes=len(workflow["nodes"]))
    report = frontend.inspect()
    assert report.clean, report.describe()

    console.phase = "run toy"
    started = time.monotonic()
    answer = frontend.queue()
    assert answer.get("prompt_id") and not answer.get("node_errors"), json.dumps(answer, indent=1)[:6000]
    prompt_id = answer["prompt_id"]
    entry = comfy_server.wait(prompt_id, RUN_TIMEOUT)
    seconds = round(time.monotonic() - started, 1)
    record_property("toy_run_seconds", seconds)
    status = entry["status"]
    assert status.get("status_str") == "success", \
        f"toy failed: {json.dumps(status.get('messages', []), indent=1)[:6000]}\n{comfy_server.log_tail(6000)}"

    outputs = entry["outputs"]
    info = comfy_server.get("/object_info")
    output_nodes = {str(n["id"]) for n in workflow["nodes"]
                    if n.get("mode", 0) == 0 and info.get(n["type"], {}).get("output_node")}
    assert output_nodes, "the toy workflow has no output node"
    assert output_nodes <= set(outputs), f"output nodes without outputs: {sorted(output_nodes - set(outputs))}"
    for node_id in output_nodes:
        values = outputs[node_id]
        assert any(v for v in values.values()), f"node {node_id}: empty outputs {values}"
        for key, items in values.items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item and "type" in item:
                    assert comfy_dirs.ui_file(item).is_file(), f"node {node_id} {key}: no file for {item}"
    summary = {k: {kk: len(vv) if isinstance(vv, list) else vv for kk, vv in v.items()} for k, v in outputs.items()}
    record_property("toy_outputs", summary)
    print(f"toy: ran in {seconds} s (queued from the Run button); outputs per node: {summary}")

    frontend.wait_until_idle(prompt_id)
    frontend.wait_for_node_outputs({k: v for k, v in outputs.items() if k in output_nodes})
    after = frontend.inspect()
    assert not after.overlay and not after.error_toasts, f"the UI shows errors after the run\n{after.describe()}"
    assert not console.errors("run toy"), _errors_text(console.errors("run toy"))
    frontend.fit_view()  # the previews made nodes taller than when the graph was fitted on opening
    print(f"toy: finished graph screenshot {frontend.screenshot('toy_finished')}")
