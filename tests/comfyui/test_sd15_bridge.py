"""The bridge node on an SD 1.5-sized model, through the server (prompts/sd15_bridge.json): Load Unlearned Model
(fp16) -> Apply MemoRa LoRA -> MemoRa Model to MODEL/CLIP/VAE -> core CLIPTextEncode / EmptyLatentImage /
KSampler (2 steps, 64 px) / VAEDecode / SaveImage. (Core's LoraLoader on our LoRA: test_sd15_core.py.)"""

from __future__ import annotations

from comfy_testing import load_prompt, png_pixels


def test_bridge_node_feeds_core_sampling(sd15_assets, comfy_server, comfy_dirs):
    prompt = load_prompt("sd15_bridge.json")
    try:
        _, entry, log = comfy_server.run(prompt, timeout=480)
    finally:
        comfy_server.free()  # the SD 1.5-sized models are not needed by later tests
    assert entry["status"]["status_str"] == "success"
    (saved,) = entry["outputs"]["9"]["images"]
    assert png_pixels(comfy_dirs.ui_file(saved)).shape == (64, 64, 3)
    assert "model_type EPS" in log  # ComfyUI detected the exported state dict as an SD 1.x (epsilon) model
    # the bridge hands the MemoRa adapter to ComfyUI's LoRA loader: every key must map
    assert "lora key not loaded" not in log and "NOT LOADED" not in log
    assert "Traceback" not in log
