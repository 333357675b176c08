"""The toy world: a tiny but real text-to-image world in which erasure and MemoRa recovery run on a CPU.

``data`` (procedural captioned shapes), ``model`` (the toy DiffusionModel and its shipped weights), ``detector``
(the concept classifier), ``train`` (the training recipes behind ``scripts/train_toy.py``), ``settings`` (every
setting of the erase -> recover -> detect experiment) and ``demo`` (``memora demo``).
"""
