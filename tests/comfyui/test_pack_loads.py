"""The pack loads in a real ComfyUI server: every V3 node is registered with its schema, nothing failed to import."""

from __future__ import annotations

import ast
import re

from comfy_testing import PACK_NAME, REPO_ROOT, TINY_BASE, TINY_UNLEARNED


def _expected_node_ids() -> dict[str, str]:
    """``{class name: node_id}`` of the classes in ``NODES`` of nodes/extension.py, read from the source (the
    pack's modules import ``comfy_api``, which this test process need not have imported)."""
    extension = ast.parse((REPO_ROOT / "nodes" / "extension.py").read_text())
    listed = None
    for node in ast.walk(extension):
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)
        if isinstance(target, ast.Name) and target.id == "NODES":
            listed = [elt.id for elt in node.value.elts]
    assert listed, "nodes/extension.py has no NODES list"
    ids = {}
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for call in ast.walk(cls):
                if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "Schema":
                    for kw in call.keywords:
                        if kw.arg == "node_id" and isinstance(kw.value, ast.Constant):
                            ids[cls.name] = kw.value.value
    missing = [name for name in listed if name not in ids]
    assert not missing, f"no literal node_id found for {missing}"
    return {name: ids[name] for name in listed}


def test_every_node_is_registered_with_category_and_tooltips(comfy_server):
    expected = _expected_node_ids()
    assert len(expected) == len(set(expected.values())) == 15
    info = comfy_server.get("/object_info")
    ours = {node_id for node_id, spec in info.items() if spec.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert ours == set(expected.values())
    for node_id in expected.values():
        spec = info[node_id]
        assert node_id.startswith("MemoRa"), node_id
        assert spec["category"].startswith("MemoRa/"), (node_id, spec["category"])
        assert spec["display_name"] and spec["description"], node_id
        for section in ("required", "optional"):
            for name, entry in spec["input"].get(section, {}).items():
                options = entry[1] if len(entry) > 1 else {}
                assert options.get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"
        assert spec["output"], node_id
    assert info["MemoRaTrainLoRA"]["output_node"] is True
    assert info["MemoRaTrainLoRA"]["output"] == ["MEMORA_MODEL", "STRING", "LOSS_MAP"]
    assert info["MemoRaToComfyModel"]["output"] == ["MODEL", "CLIP", "VAE"]
    # the loss map plugs into core's "Plot Loss Graph"
    assert info["LossGraphNode"]["input"]["required"]["loss"][0] == "LOSS_MAP"


def test_model_combos_list_the_models_folders(comfy_server, tiny_assets):
    """The base combo reads models/checkpoints; the unlearned combo reads the models/unlearned folder the pack
    registers in ``on_load`` (here under the session's --base-directory)."""
    spec = comfy_server.get("/object_info/MemoRaLoadUnlearnedModel")["MemoRaLoadUnlearnedModel"]["input"]
    assert f"checkpoints/{TINY_BASE}" in spec["required"]["base"][1]["options"]
    unlearned = spec["required"]["unlearned"][1]["options"]
    assert unlearned[0] == "[none]" and f"unlearned/{TINY_UNLEARNED}" in unlearned


def test_no_v1_registration():
    """A module-level NODE_CLASS_MAPPINGS would silently win over comfy_entrypoint (V1 path first)."""
    entry = ast.parse((REPO_ROOT / "__init__.py").read_text())
    names = {t.id for node in entry.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    assert not names & {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"}
    assert any(isinstance(node, (ast.AsyncFunctionDef, ast.FunctionDef)) and node.name == "comfy_entrypoint"
               for node in entry.body)
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        assert "NODE_CLASS_MAPPINGS" not in path.read_text(), path


def test_server_log_has_no_import_failure(comfy_server):
    log = comfy_server.log_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    assert failed == [], failed
    assert not re.search(r"Cannot import .*" + re.escape(PACK_NAME), log)
    assert re.search(r"seconds: \S*custom_nodes/" + re.escape(PACK_NAME) + r"\s*$", log, re.MULTILINE), \
        "the pack is missing from ComfyUI's custom-node import times"
