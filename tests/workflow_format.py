"""ComfyUI's two workflow formats, for the workflow tests and scripts/make_workflows.py.

- UI format (what ``workflows/*.json`` hold and the frontend saves): ``nodes`` with ``widgets_values`` and socket
  ``inputs``/``outputs``, and ``links`` ``[id, from node, from slot, to node, to slot, type]``.
- API format (what ``POST /prompt`` takes): ``{node id: {"class_type", "inputs": {name: value | [node, slot]}}}``.

The mapping between them needs each node type's schema (``/object_info``): which inputs are widgets, in which
order, and which widgets carry an extra "control after generate" value. ``tests/data/object_info.json`` is a
snapshot of the schemas our workflows use (checked against a live server by tests/comfyui/test_workflows_live.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "tests" / "data" / "object_info.json"
WORKFLOWS = REPO / "workflows"
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # nodes the frontend alone knows
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Combos whose choices are the user's files: any value is accepted statically (the file may not exist here).
FILE_COMBOS = {("MemoRaLoadUnlearnedModel", "base"), ("MemoRaLoadUnlearnedModel", "unlearned"),
               ("MemoRaLoadUnlearnedModel", "unlearned_extra"), ("MemoRaApplyLoRA", "lora_name"),
               ("MemoRaLoadDetector", "model_file"), ("MemoRaEvaluatePromptSet", "prompt_csv"),
               ("LoraLoader", "lora_name"), ("CheckpointLoaderSimple", "ckpt_name"), ("LoadImage", "image"),
               ("UNETLoader", "unet_name")}


def load_schemas(path: Path = SCHEMAS) -> dict[str, Any]:
    return json.loads(path.read_text())


def input_spec(schema: dict, name: str) -> list:
    for section in ("required", "optional"):
        if name in schema["input"].get(section, {}):
            return schema["input"][section][name]
    raise KeyError(name)


def ordered_inputs(schema: dict) -> list[str]:
    order = schema.get("input_order", {})
    return list(order.get("required", [])) + list(order.get("optional", []))


def is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput", False)


def combo_options(spec: list) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def has_control_widget(name: str, spec: list) -> bool:
    """The frontend adds a "control after generate" value after this widget's value: for an INT whose schema
    asks for it, and (unless the schema says no) for any INT named ``seed`` or ``noise_seed``."""
    if spec[0] != "INT":
        return False
    options = spec[1] if len(spec) > 1 else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return name in ("seed", "noise_seed")


def widget_names(schema: dict) -> list[str]:
    return [n for n in ordered_inputs(schema) if is_widget(input_spec(schema, n))]


def widget_values_by_name(node: dict, schema: dict) -> dict[str, Any]:
    """``{input name: value}`` from a UI node's ``widgets_values`` (control values skipped)."""
    values = list(node.get("widgets_values") or [])
    out: dict[str, Any] = {}
    i = 0
    for name in widget_names(schema):
        if i >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): no value for widget {name!r}")
        out[name] = values[i]
        i += 1
        if has_control_widget(name, input_spec(schema, name)):
            i += 1
    if i != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, expected {i}")
    return out


def to_api(workflow: dict, schemas: dict) -> dict[str, dict]:
    """A UI-format workflow -> an API-format prompt (frontend-only nodes dropped, muted/bypassed refused)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} is muted or bypassed")
        schema = schemas[node["type"]]
        inputs: dict[str, Any] = dict(widget_values_by_name(node, schema))
        for socket in node.get("inputs", []):
            if socket.get("link") is None:
                continue
            _, origin, slot, _, _, _ = links[socket["link"]]
            inputs[socket["name"]] = [str(origin), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or schema.get("display_name", node["type"])}}
    return prompt
