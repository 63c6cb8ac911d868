"""The toy world: procedural scenes with captions and the tiny models trained on them.

The pack's built-in default (DESIGN.md 5), one package with two halves:

- ``runtime``: what the pack needs at run time inside ComfyUI: the assets' JSON config
  (``config``), the generator's tiny text encoder (``text_encoder``) and the reward loader
  (``reward``). The Toy World Loader node (``nodes/toyworld.py``) is its only ComfyUI user.
- ``build``: how the assets were made: data and captions, reward and generator training, the
  build pipeline and its record (``python scripts/build_toyworld.py``). Never imported by the
  pack at run time.
- ``assets``: the committed weights and ``toyworld.json``.

The engine (``srpo_core``) imports nothing from here; ``build`` uses the engine's own x_t, Euler
rollout and CLIP preprocessing.
"""
