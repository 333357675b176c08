"""ComfyUI V3 nodes of ComfyUI-MemoRa: thin adapters around the ``memora`` engine.

``extension.py`` registers them; ``convert.py`` and ``preview.py`` import nothing from ComfyUI (unit-tested
without it). Importing the pack is cheap: the engine's heavy dependencies (diffusers, transformers, peft) are
imported inside ``execute``, when a node first runs.
"""
