"""MemoRa engine: Memory Self-Regeneration attacks on unlearned text-to-image diffusion models.

Plain torch / diffusers / peft; no ComfyUI import. The main entry points::

    from memora.loading import load_model          # base SD 1.x + unlearned weights, any released format
    from memora.recover import recover              # images -> inversion -> slerp -> regeneration -> LoRA
    from memora.lora import train_lora, save_lora   # the LoRA recipe and its kohya export
"""

__version__ = "0.1.0"
