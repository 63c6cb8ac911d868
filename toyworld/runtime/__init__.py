"""Run-time half of the toy world: asset config (``config``), text encoder (``text_encoder``),
reward loader (``reward``) and, needing ComfyUI, its MODEL/CLIP/VAE objects (``comfy_models``)."""
