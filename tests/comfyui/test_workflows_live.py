"""The example workflows against a real ComfyUI: the schema snapshot the static tests use is the server's, and the
toy workflow, converted to API format, runs end to end on the CPU (erase -> recover -> measure)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from comfy_testing import REPO_ROOT


def _workflow_format():
    spec = importlib.util.spec_from_file_location("memora_workflow_format", REPO_ROOT / "tests" / "workflow_format.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wf = _workflow_format()


def _comparable(spec: list, file_combo: bool) -> list:
    kind = spec[0]
    options = dict(spec[1]) if len(spec) > 1 else {}
    options.pop("tooltip", None)
    if file_combo:  # the choices are the files of this server's folders
        options.pop("options", None)
        kind = "COMBO" if isinstance(kind, list) else kind
    return [kind, options]


def test_schema_snapshot_matches_the_server(comfy_server):
    live = comfy_server.get("/object_info")
    snapshot = wf.load_schemas()
    stale = []
    for name, schema in snapshot.items():
        assert name in live, f"{name} is in tests/data/object_info.json but not on the server"
        server = live[name]
        if server["input_order"] != schema["input_order"] or server["output"] != schema["output"] \
                or server["output_name"] != schema["output_name"]:
            stale.append(name)
            continue
        for field in wf.ordered_inputs(schema):
            file_combo = (name, field) in wf.FILE_COMBOS
            if _comparable(wf.input_spec(server, field), file_combo) != \
                    _comparable(wf.input_spec(schema, field), file_combo):
                stale.append(f"{name}.{field}")
    assert not stale, f"stale snapshot for {stale}: run scripts/make_workflows.py --refresh URL and commit"


@pytest.fixture(scope="module")
def toy_run(comfy_server):
    workflow = json.loads((REPO_ROOT / "workflows" / "toy.json").read_text())
    prompt = wf.to_api(workflow, wf.load_schemas())
    for node in prompt.values():  # this test's own output names (the browser test may run the toy workflow too)
        inputs = node["inputs"]
        if "run_name" in inputs:
            inputs["run_name"] = inputs["run_name"].replace("memora/toy", "memora_live/toy")
        if node["class_type"] == "MemoRaTrainLoRA":
            inputs["filename_prefix"] = "memora_live/toy_circle"
    _, entry, log = comfy_server.run(prompt, timeout=1500)
    return prompt, entry, log


def _rate(comfy_dirs, label: str) -> float:
    summary = json.loads((comfy_dirs.output / "memora_live" / "toy" / label / "results-toy-circle.json").read_text())
    assert summary["images"] == 48 and summary["protocol"]["detector"] == "toy"
    return summary["success_rate"]


def test_toy_workflow_erases_and_recovers_the_circle(toy_run, comfy_dirs):
    _, entry, log = toy_run
    assert entry["status"]["status_str"] == "success", log[-4000:]
    original, erased, recovered = (_rate(comfy_dirs, x) for x in ("original", "erased", "recovered"))
    assert original >= 0.8, original
    assert erased <= 0.5, erased
    assert recovered >= erased + 0.2, (erased, recovered)
    loras = list((comfy_dirs.loras / "memora_live").glob("toy_circle*.safetensors"))
    assert len(loras) == 1
    assert len(list((comfy_dirs.output / "memora_live" / "toy" / "recovered" / "images").glob("*.png"))) == 48
