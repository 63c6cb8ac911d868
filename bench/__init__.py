"""Benchmarks of the SRPO pack: FLUX.1-dev memory/FLOP model (CPU), GPU benchmark.

Not part of the pack: these import ComfyUI and the pack (as ``comfyui_srpo``) to measure the
trainer's own code path. Nothing here needs a GPU unless it says so.
"""
