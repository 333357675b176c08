"""Cancelling Train MemoRa LoRA from ComfyUI (POST /interrupt) leaves a valid partial LoRA that says so.

The test follows the server's websocket and interrupts only once the training node has reported 10 optimizer
updates (and sent its first live loss-curve preview), so the interruption lands inside the training loop whatever
the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import torch

from comfy_testing import kohya_modules, load_prompt, read_safetensors

TRAIN_NODE = "9"
WAIT_FOR_TRAINING = 240  # seconds until the first update is reported (loading + caching on a busy CPU)
WAIT_FOR_STOP = 60  # seconds from the interrupt to the end of the prompt
PREVIEW_EVERY = 10  # the training node draws its live loss curve every 10 updates


async def _run_and_interrupt(url: str, prompt: dict) -> tuple[str, dict, dict]:
    """Queue ``prompt``, wait for a training progress event at update >= 10, POST /interrupt, wait for the end.

    Returns ``(prompt_id, the progress event interrupted at + the number of previews seen, the final event)``.
    """
    import aiohttp

    steps = prompt[TRAIN_NODE]["inputs"]["steps"]
    client_id = uuid.uuid4().hex
    previews: list[int] = []
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.json()
                assert r.status == 200 and not body.get("node_errors"), body
            prompt_id = body["prompt_id"]

            async def next_event(deadline: float) -> dict:
                while True:
                    msg = await ws.receive(timeout=max(0.1, deadline - loop.time()))
                    if msg.type == aiohttp.WSMsgType.BINARY and b"\x89PNG" in msg.data[:64]:
                        previews.append(len(msg.data))  # a live preview image (the loss curve)
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if event.get("data", {}).get("prompt_id") in (prompt_id, None):
                            return event
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise AssertionError(f"websocket closed: {msg}")

            deadline = loop.time() + WAIT_FOR_TRAINING
            while True:
                event = await next_event(deadline)
                data = event.get("data", {})
                if (event["type"] == "progress" and data.get("node") == TRAIN_NODE and data.get("max") == steps
                        and data["value"] >= PREVIEW_EVERY and previews):  # (a preview follows its progress)
                    at = dict(data, previews=len(previews))
                    break
                assert event["type"] not in ("execution_error", "execution_success", "execution_interrupted"), event
            async with session.post(f"{url}/interrupt", json={"prompt_id": prompt_id}) as r:
                assert r.status == 200
            deadline = loop.time() + WAIT_FOR_STOP
            while True:
                event = await next_event(deadline)
                if event["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                    return prompt_id, at, event


def test_interrupted_training_writes_a_partial_lora(comfy_server, comfy_dirs, tiny_assets):
    from memora.loading import load_model
    from memora.lora import load_lora

    prompt = load_prompt("train_interrupt_tiny.json")
    steps = prompt[TRAIN_NODE]["inputs"]["steps"]
    prompt_id, at, final = asyncio.run(_run_and_interrupt(comfy_server.url, prompt))
    assert final["type"] == "execution_interrupted", final
    assert final["data"]["node_id"] == TRAIN_NODE
    assert at["previews"] >= 1, "no live loss-curve preview reached the websocket"

    entry = comfy_server.wait(prompt_id, timeout=30)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]

    partial = sorted((comfy_dirs.loras / "memora_test").glob("interrupted*.safetensors"))
    assert [p.name for p in partial] == ["interrupted.safetensors"]
    tensors, metadata = read_safetensors(partial[0])
    assert len(kohya_modules(tensors)) == 128
    info = json.loads(metadata["memora"])
    assert info["interrupted"] is True
    assert at["value"] <= info["steps_done"] < steps and info["steps_total"] == steps
    assert "partial" in comfy_server.log_text() or str(partial[0]) in comfy_server.log_text()

    model = load_model(str(tiny_assets.base), dtype=torch.float32)
    name = load_lora(model, partial[0], weight=1.0)
    assert name in model.unet.peft_config
