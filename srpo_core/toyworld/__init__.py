"""The toy world: procedural scenes with captions and the tiny models trained on them.

Modules (none imports ComfyUI):

- ``data``: deterministic 64x64 scenes (shape, colour, lighting, surface) and their pixels.
- ``captions``: training captions and the zero-shot prompts of each word axis.
- ``reward_model`` / ``reward_training``: the tiny open_clip reward and its contrastive training.
- ``text_encoder``: the generator's tiny text encoder over open_clip's BPE tokenizer.
- ``flow_matching``: the generator's training loss and Euler sampling.
- ``assets``: where the committed weights live and what their ``toyworld.json`` says.

The ComfyUI-dependent parts (TAESD VAE, Flux generator, CLIP adapter) live in
``scripts/toyworld`` and are built by ``scripts/build_toyworld.py``.
"""
