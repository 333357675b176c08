"""Static checks of the example workflows (``workflows/*.json``, UI format), in CI without ComfyUI.

Node schemas come from ``tests/data/object_info.json``, a snapshot of ``/object_info`` that
tests/comfyui/test_workflows_live.py compares with a real server.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from workflow_format import (FILE_COMBOS, FRONTEND_ONLY, REPO, WORKFLOWS, combo_options, input_spec, is_widget,
                             load_schemas, ordered_inputs, to_api, widget_values_by_name)

EXPECTED = ["automemora", "church", "garbage_truck", "multi_memora", "nudity", "parachute", "toy",
            "use_recovered_lora", "vangogh"]
SCHEMAS = load_schemas()
FILES = sorted(WORKFLOWS.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_shipped_workflows_are_there_with_thumbnails():
    assert [p.stem for p in FILES] == EXPECTED
    for path in FILES:
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{path.name} has no thumbnail {thumb.name}"
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumb.name} is not a JPEG"
    assert not list(WORKFLOWS.glob("*/*.json")), "workflows/ must hold only the example workflows"


def test_the_snapshot_covers_every_node_of_the_pack():
    tree = ast.parse((REPO / "nodes" / "extension.py").read_text())
    listed = next(node.value for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
                  and getattr(getattr(node, "target", None) or node.targets[0], "id", "") == "NODES")
    ids = set()
    for path in (REPO / "nodes").glob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "Schema":
                ids.update(kw.value.value for kw in call.keywords if kw.arg == "node_id")
    assert len(listed.elts) == len(ids)
    assert ids <= set(SCHEMAS), f"snapshot lacks {ids - set(SCHEMAS)}; run scripts/make_workflows.py --refresh"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_is_valid_ui_format(path):
    wf = _load(path)
    for key in ("nodes", "links", "last_node_id", "last_link_id", "version"):
        assert key in wf, key
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and max(nodes) <= wf["last_node_id"]
    links = {link[0]: link for link in wf["links"]}
    assert len(links) == len(wf["links"]) and (not links or max(links) <= wf["last_link_id"])
    for link_id, origin, slot, target, target_slot, kind in wf["links"]:
        assert nodes[origin]["outputs"][slot]["type"] == kind, (path.name, link_id)
        assert link_id in nodes[origin]["outputs"][slot]["links"], (path.name, link_id)
        assert nodes[target]["inputs"][target_slot]["link"] == link_id, (path.name, link_id)
    for node in wf["nodes"]:
        for socket in node.get("inputs", []):
            assert socket["link"] is None or socket["link"] in links, (path.name, node["id"], socket["name"])
        assert len(node["pos"]) == 2 and len(node["size"]) == 2


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_node_exists_and_every_value_fits(path):
    wf = _load(path)
    for node in wf["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        assert kind in SCHEMAS, f"{path.name}: unknown node type {kind}"
        schema = SCHEMAS[kind]
        values = widget_values_by_name(node, schema)
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for name in ordered_inputs(schema):
            spec = input_spec(schema, name)
            where = f"{path.name}: node {node['id']} {kind}.{name}"
            if not is_widget(spec):
                if name in schema["input"].get("required", {}):
                    assert name in linked, f"{where} is required and not linked"
                continue
            if name in linked:
                continue
            value, options = values[name], (spec[1] if len(spec) > 1 else {})
            choices = combo_options(spec)
            if choices is not None:
                assert isinstance(value, str) and value, where
                if (kind, name) not in FILE_COMBOS:
                    assert value in choices, f"{where}: {value!r} not in {choices}"
            elif spec[0] == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), where
                assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value}"
            elif spec[0] == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value}"
            elif spec[0] == "BOOLEAN":
                assert isinstance(value, bool), where
            elif spec[0] == "STRING":
                assert isinstance(value, str), where


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_links_join_matching_types_and_convert_to_api(path):
    wf = _load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, origin, slot, target, target_slot, kind in wf["links"]:
        out_type = SCHEMAS[nodes[origin]["type"]]["output"][slot]
        socket = nodes[target]["inputs"][target_slot]
        in_spec = input_spec(SCHEMAS[nodes[target]["type"]], socket["name"])
        in_type = in_spec[0] if not isinstance(in_spec[0], list) else "COMBO"
        assert out_type == kind, (path.name, link_id)
        assert in_type in (out_type, "*") or out_type == "*", f"{path.name}: link {link_id} {out_type} -> {in_type}"
    prompt = to_api(wf, SCHEMAS)
    assert prompt and all(v["class_type"] in SCHEMAS for v in prompt.values())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_workflow_explains_itself(path):
    notes = [n for n in _load(path)["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, f"{path.name} has no Note"
    text = "\n".join(n["widgets_values"][0] for n in notes)
    assert "Expected" in text and "models/" in text, path.name  # timing/VRAM, and which file goes where
    if path.stem not in ("toy", "use_recovered_lora"):
        assert "Reading it" in text, path.name  # how to read the numbers


def test_readme_shows_each_workflow_with_a_screenshot():
    import re

    readme = (REPO / "README.md").read_text()
    shots = re.findall(r"!\[[^\]]*\]\((docs/screenshots/[^)]+)\)", readme)
    assert {Path(s).stem for s in shots} == set(EXPECTED) | {"toy_finished"}
    for shot in shots:
        assert (REPO / shot).is_file(), f"README shows {shot}, which does not exist"
        assert (REPO / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_seed_widgets_carry_the_frontends_control_value(path):
    """The frontend gives every INT named seed/noise_seed a "control after generate" widget (unless the schema
    says otherwise): its value must follow the seed in widgets_values, or every later value shifts by one."""
    for node in _load(path)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        schema = SCHEMAS[node["type"]]
        widgets = [n for n in ordered_inputs(schema) if is_widget(input_spec(schema, n))]
        values, i = node["widgets_values"], 0
        for name in widgets:
            spec = input_spec(schema, name)
            i += 1
            if spec[0] == "INT" and (name in ("seed", "noise_seed") or (spec[1] if len(spec) > 1 else {}).get(
                    "control_after_generate")):
                assert values[i] in ("fixed", "increment", "decrement", "randomize"), (path.name, node["id"], name)
                i += 1
        assert i == len(values), (path.name, node["id"])
