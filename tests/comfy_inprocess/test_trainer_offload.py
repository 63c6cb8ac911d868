"""Block offloading in the Direct-Align Trainer (issue 17 item 3): at most ``offload_blocks``
transformer blocks resident during the run (rollout, training forward, the backward's
recomputation), the same LoRA as without offloading (a LoRA loaded before the trainer still
applied), clone mode refused, and memory_budget picking offloading for a tight budget.

On a CPU the "device" is the host, so the test makes every device copy a real copy (a clone:
same bits, other storage), as a CUDA copy would be; the offloader then runs every block on its
copies and the counts below are those of a GPU run.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import TINY_FLUX, randomize
from test_trainer_node import node_inputs, prompts, reward  # noqa: F401  (fixtures)

FOUR_BLOCKS = {**TINY_FLUX, "depth": 2, "depth_single_blocks": 2}
"""The tiny Flux with 2 double + 2 single blocks (offloading needs more blocks than resident)."""
RESIDENT, PREFETCH = 2, 1
FAST = {
    "steps": 2,
    "noise_levels": 1,
    "rollout_steps": 3,
    "preview_every": 0,
    "hacking_guard": "off",
}
"""Short runs: each step is a 3-step rollout, one noise level (forward + recomputation)."""
LORA_RANK_BEFORE = 2


@pytest.fixture
def flux4(pack: ModuleType) -> Any:
    """A ModelPatcher around a 4-block tiny comfy Flux with seeded weights (inference mode)."""
    import comfy.model_patcher
    import comfy.supported_models

    cpu = torch.device("cpu")
    with torch.inference_mode():
        model = comfy.supported_models.Flux(dict(FOUR_BLOCKS)).get_model({}, device=cpu)
        randomize(model.diffusion_model, seed=0)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture
def offloaders(pack: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every BlockOffloader the trainer creates, each recording the direction of its loads and
    the bytes ComfyUI's loaded-model list counts for the model when it starts; device copies are
    clones (module doc)."""
    import comfy.model_management as mm
    from comfyui_srpo.nodes import offload as node_offload
    from comfyui_srpo.srpo_core import offload as core_offload

    made: list[Any] = []

    class Recording(core_offload.BlockOffloader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.backward_loads = 0
            first = self.blocks[0]
            self.accounted = [
                loaded.model.loaded_size()
                for loaded in mm.current_loaded_models
                if loaded.model is not None
                and hasattr(loaded.model.model, "diffusion_model")
                and any(m is first for m in loaded.model.model.diffusion_model.modules())
            ]
            made.append(self)

        def use(self, index: int, *, backward: bool) -> None:
            super().use(index, backward=backward)
            self.backward_loads += backward
            copies = self.loaded[index].copies
            hosts = {t.data_ptr() for t in self.host[index]}
            assert copies and not hosts & {t.data_ptr() for t in copies}, "ran on a host copy"

    monkeypatch.setattr(core_offload, "_default_move", lambda t, device: t.clone())
    monkeypatch.setattr(node_offload, "BlockOffloader", Recording)
    return made


def with_lora_before(model: Any) -> Any:
    """A clone of ``model`` with a seeded rank-2 LoRA on every block Linear, loaded the way
    ComfyUI's LoRA loaders do (``comfy.lora.load_lora`` -> ``add_patches``)."""
    import comfy.lora

    patched = model.clone()
    keys = comfy.lora.model_lora_keys_unet(patched.model, {})
    g = torch.Generator().manual_seed(7)
    state = {}
    for lora_key, weight_key in keys.items():
        if not isinstance(weight_key, str) or "blocks." not in weight_key:
            continue
        weight = patched.model.state_dict()[weight_key]
        if weight.ndim != 2:
            continue
        out, inp = weight.shape
        state[f"{lora_key}.lora_up.weight"] = torch.randn(out, LORA_RANK_BEFORE, generator=g) / 8
        state[f"{lora_key}.lora_down.weight"] = torch.randn(LORA_RANK_BEFORE, inp, generator=g) / 8
    assert state, "no block Linear found for the LoRA"
    patched.add_patches(comfy.lora.load_lora(state, keys), 1.0)
    return patched


def train(
    model: Any, vae: Any, prompt_set: Any, rewarder: Any, inputs: Any = None, **overrides: Any
) -> Any:
    """The trainer node on ``inputs`` (default: 2 steps, fp32 LoRA, with ``overrides``)."""
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    if inputs is None:
        inputs = node_inputs(**{**FAST, "save_dtype": "fp32", **overrides})
    with torch.inference_mode():
        return SRPODirectAlignTrainer.execute(model, vae, prompt_set, rewarder, **inputs)


@pytest.mark.slow
def test_offloading_trains_the_same_lora_with_at_most_k_blocks_resident(
    pack: ModuleType,
    flux4: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
    offloaders: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """offload_blocks 2 vs 0 on a model carrying a LoRA loaded before the trainer: the same ops
    in the same order on bit-identical copies of the (patched) weights, so the same LoRA bit for
    bit; without the earlier LoRA the trained one differs (the patches reached the blocks)."""
    import comfy.model_management as mm
    from comfyui_srpo.nodes.memory import PatchedModule
    from comfyui_srpo.nodes.offload import resident_weight_bytes

    patched = with_lora_before(flux4)
    plain = train(patched, tiny_vae, prompts, reward).args[1]
    assert not offloaders, "no offloading when offload_blocks is 0"
    loads: list[Any] = []
    load = mm.load_models_gpu

    def recording(models: list[Any], **kw: Any) -> None:
        loads.extend(models)
        load(models, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(mm, "load_models_gpu", recording)
        offloaded = train(patched, tiny_vae, prompts, reward, offload_blocks=RESIDENT).args[1]
    assert loads and all(isinstance(m.model, PatchedModule) for m in loads), (
        "only the reward and decoder are loaded by load_models_gpu, the model is placed in part"
    )
    (offloader,) = offloaders
    diffusion = patched.model.diffusion_model
    assert offloader.accounted == [resident_weight_bytes(patched.model, diffusion, RESIDENT)]
    assert offloader.config.resident_blocks == RESIDENT
    assert offloader.config.prefetch == PREFETCH
    assert 1 < offloader.max_resident <= RESIDENT
    assert offloader.backward_loads > 0, "the backward's recomputation loaded blocks"
    # each step: 3 rollout passes, the forward and the backward's recomputation; each pass
    # loads every block beyond the resident ones at least once
    passes = FAST["steps"] * (FAST["rollout_steps"] + 2 * FAST["noise_levels"])
    per_block = min(offloader.block_bytes(i) for i in range(len(offloader.blocks)))
    assert offloader.moved_bytes >= passes * (4 - RESIDENT) * per_block
    assert plain.keys() == offloaded.keys()
    for key, value in plain.items():
        assert torch.equal(offloaded[key], value), key
    assert not any(m.model is patched for m in mm.current_loaded_models if m.model is not None)
    without = train(flux4, tiny_vae, prompts, reward, offload_blocks=RESIDENT).args[1]
    diff = sum(float((without[k] - v).abs().sum()) for k, v in offloaded.items())
    assert diff > 0, "the LoRA loaded before the trainer changed nothing"


def test_offloading_with_clone_mode_is_refused_before_anything_loads(
    pack: ModuleType,
    flux4: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from comfyui_srpo.nodes import memory
    from comfyui_srpo.nodes.training_settings import SRPOTrainingSettingsNode, TrainingSettings

    with pytest.raises(ValueError, match="needs gradient_checkpointing checkpoint"):
        node_inputs(gradient_checkpointing="clone", offload_blocks=RESIDENT)
    fields = dataclasses.asdict(TrainingSettings())
    accepted = SRPOTrainingSettingsNode.execute(**{**fields, "gradient_checkpointing": "clone"})
    assert accepted.args[0].gradient_checkpointing == "clone"  # without offloading: fine
    started: list[int] = []
    monkeypatch.setattr(memory.mm, "load_models_gpu", lambda *a, **k: started.append(1))
    settings = TrainingSettings(gradient_checkpointing="clone", offload_blocks=RESIDENT)
    inputs = {**node_inputs(steps=1), "settings": settings}
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    refused = pytest.raises(ValueError, match="needs gradient_checkpointing checkpoint")
    with refused, torch.inference_mode():
        SRPODirectAlignTrainer.execute(flux4, tiny_vae, prompts, reward, **inputs)
    assert not started, "nothing loaded"


def test_a_tight_budget_picks_offloading_and_the_node_names_the_resident_blocks(
    pack: ModuleType,
    flux4: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
    offloaders: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A memory_budget between the need of the ladder's last rung without offloading and its
    need with offloading: the trainer offloads, says so with the resident block count before
    training, and keeps at most that many blocks resident."""
    from comfyui_srpo.nodes import memory_budget, training_run
    from comfyui_srpo.srpo_core.training.memory_plan import GIB, pick

    texts: list[str] = []
    monkeypatch.setattr(memory_budget, "node_text", texts.append)
    inputs = node_inputs(**{**FAST, "steps": 1})
    settings = training_run.build_settings(flux4, tiny_vae, None, inputs)
    arch = memory_budget.architecture_of(flux4, tiny_vae, reward)
    assert arch is not None and arch.transformer.blocks == 4
    wanted = memory_budget.estimate_settings(settings, memory_budget.base_dtype_of(flux4))
    resident = pick(arch, wanted, 0.0, offload=False, context=True)
    offloading = pick(arch, wanted, 0.0, offload=True, context=True)
    assert offloading.settings.offload_blocks and offloading.need < resident.need
    budget = (resident.need + offloading.need) / 2 / GIB
    inputs["settings"] = dataclasses.replace(inputs["settings"], memory_budget=repr(budget))
    train(flux4, tiny_vae, prompts, reward, inputs)
    (text,) = [t for t in texts if t.startswith("SRPO memory:")]
    (offloader,) = offloaders
    k = offloader.config.resident_blocks
    assert f"block offloading ({k} of 4 blocks resident)" in text, text
    assert f"Block offloading: {k} transformer blocks resident" in text, text
    assert offloader.max_resident <= k < 4
