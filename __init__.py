"""ComfyUI-MemoRa: ComfyUI entry point.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint()``. Only the V3 extension and the web
directory are defined here; the nodes live in ``nodes/`` and the engine in ``memora/``.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import MemoraExtension

    return MemoraExtension()
