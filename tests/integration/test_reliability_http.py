"""Reliability of training through a real ComfyUI (toy world, CPU), driven over HTTP.

Resume rules, same seed -> same LoRA, stale temp files, the non-finite-step path, existing
LoRAs of another rank, the base model left untouched, interrupts during prompt encoding.
Each test names the guarantee of docs/RELIABILITY.md it proves.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from scripts.comfy_harness.server import ComfyServer, ExecutionInterrupted
from tests.integration.toy_prompts import (
    LOADER,
    PROMPTS,
    REWARD,
    RUN_TIMEOUT_S,
    TRAINER,
    failure,
    rejected,
    same_tensors,
    saved_lora,
    second_trainer,
    toy_workflow,
    training_prompt,
)

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

# --- failure 1 and the resume rules ------------------------------------------------------


def test_resume_rules_and_stale_temp_files(comfy: ComfyServer) -> None:
    """A finished checkpoint re-queued returns its LoRA, more steps continue, fewer are refused
    at queue time, other settings are refused naming node inputs (learning_rate, not lr); none
    of these crash when the resumed part has no preview step (failure 1). Temp files of
    crashed saves are removed when the next run starts using the folder (failure 6)."""
    name = "resume_rules"
    with comfy.client() as client:
        client.run(training_prompt("rr_first", checkpoint_name=name), timeout=RUN_TIMEOUT_S)
        first = saved_lora(comfy, "rr_first")
        # finished checkpoint re-queued (preview_every differs so ComfyUI reruns the node)
        again = training_prompt("rr_again", checkpoint_name=name, preview_every=7)
        client.run(again, timeout=RUN_TIMEOUT_S)
        assert same_tensors(saved_lora(comfy, "rr_again"), first)
        # raised step count: continues from step 2 to 3 (step 2 has no preview)
        client.run(training_prompt("rr_more", checkpoint_name=name, steps=3), timeout=RUN_TIMEOUT_S)
        assert not same_tensors(saved_lora(comfy, "rr_more"), first)
        fewer = rejected(client, training_prompt("rr_fewer", checkpoint_name=name, steps=1))
        stale = [comfy.dirs.output / "srpo_checkpoints" / f".x.ckpt.{t}.tmp" for t in "abc"]
        for path in stale:
            path.write_bytes(b"")
        messages = {
            "learning_rate": failure(
                client, training_prompt("rr_lr", checkpoint_name=name, learning_rate=1e-3, steps=3)
            ),
            "rank": failure(
                client, training_prompt("rr_rank", checkpoint_name=name, rank=4, steps=3)
            ),
        }
        other_words = training_prompt("rr_words", checkpoint_name=name, steps=3)
        other_words[REWARD]["inputs"]["positive_words"] = "shiny"
        messages["positive_words"] = failure(client, other_words)
    assert "already trained 3 steps" in fewer and "steps" in fewer
    for input_name, message in messages.items():
        assert input_name in message and "lr:" not in message, message
    assert not [p for p in stale if p.exists()]


# --- failure 2: same seed, same LoRA -------------------------------------------------------


def test_same_seed_gives_the_same_lora_whatever_ran_before(comfy: ComfyServer) -> None:
    """Adapter initialisation draws from the run's seed: a run, the same run after another
    seed's run, and the same run resumed from a 1-step checkpoint give identical tensors."""
    with comfy.client() as client:
        client.run(training_prompt("seed_a1"), timeout=RUN_TIMEOUT_S)
        client.run(training_prompt("seed_b", seed=4, steps=1), timeout=RUN_TIMEOUT_S)
        client.run(training_prompt("seed_a2", preview_every=6), timeout=RUN_TIMEOUT_S)
        a1, a2 = saved_lora(comfy, "seed_a1"), saved_lora(comfy, "seed_a2")
        diff = max(float((a1[k].float() - a2[k].float()).abs().max()) for k in a1)
        assert same_tensors(a1, a2), f"max abs difference {diff}"
        part = training_prompt("seed_part", steps=1, checkpoint_name="seeded")
        client.run(part, timeout=RUN_TIMEOUT_S)
        client.run(training_prompt("seed_a3", checkpoint_name="seeded"), timeout=RUN_TIMEOUT_S)
    assert same_tensors(a1, saved_lora(comfy, "seed_a3"))


# --- failure 9: existing LoRA of another rank / dtype --------------------------------------


def test_existing_lora_of_another_rank_warns_what_was_kept(comfy: ComfyServer) -> None:
    prompt = training_prompt("existing", steps=1, rank=2, lora_dtype="bf16")
    second_trainer(prompt, "40", rank=8, lora_dtype="fp32", existing_lora=[TRAINER, 1])
    before = len(comfy.log_text())
    with comfy.client() as client:
        client.run(prompt, timeout=RUN_TIMEOUT_S)
    log = comfy.log_text()[before:]
    assert "kept its rank 2 (node input rank 8)" in log, log[-3000:]
    assert "converted its dtype bfloat16 to lora_dtype float32" in log


# --- item 10: a non-finite step over HTTP --------------------------------------------------


def test_a_nan_reward_step_is_skipped_and_training_finishes(comfy: ComfyServer) -> None:
    """A test-only node makes the reward model return NaN on its 1st call. The toy prompt trains
    one micro-step per step (one reward call), and the reward-hacking guard's baseline scores
    nothing of its own (it takes step 0's training reward), so step 1 of 2 is the non-finite one
    and step 2 must train normally."""
    prompt = training_prompt("nan", steps=2)
    prompt["41"] = {
        "class_type": "TestOnlyNaNRewardModel",
        "inputs": {"reward_model": [LOADER, 3], "nan_call": 0},
    }
    prompt[REWARD]["inputs"]["reward_model"] = ["41", 0]
    before = len(comfy.log_text())
    with comfy.client() as client:
        client.run(prompt, timeout=RUN_TIMEOUT_S)
    log = comfy.log_text()[before:]
    lines = [line for line in log.splitlines() if "SRPO step" in line]
    assert len(lines) == 2, lines
    assert "skipped (non-finite)" in lines[0] and "skipped" not in lines[1], lines
    lora = saved_lora(comfy, "nan")
    assert all(torch.isfinite(t.float()).all() for t in lora.values())


# --- held: the base model is untouched -----------------------------------------------------


def sample_prompt(tag: str, seed: Any, base: dict[str, Any]) -> dict[str, Any]:
    """The toy workflow's sampler on the loader's (base) MODEL, 4 steps, saved as <tag>."""
    full = toy_workflow()
    sampler = next(
        k
        for k, n in full.items()
        if n["class_type"] == "KSampler" and n["inputs"]["model"] == [LOADER, 0]
    )
    decode = next(
        k
        for k, n in full.items()
        if n["class_type"] == "VAEDecode" and n["inputs"]["samples"] == [sampler, 0]
    )
    inputs = full[sampler]["inputs"]
    wanted = [sampler, decode, inputs["positive"][0], inputs["negative"][0]]
    prompt = {**base, **{k: full[k] for k in [*wanted, inputs["latent_image"][0]]}}
    prompt[inputs["latent_image"][0]]["inputs"]["batch_size"] = 1
    prompt[sampler]["inputs"].update({"seed": seed, "steps": 4})
    prompt["save_sample"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [decode, 0], "filename_prefix": tag},
    }
    return prompt


def test_base_model_is_unchanged_after_training(comfy: ComfyServer) -> None:
    """The loader's cached MODEL samples the same image before and after a training run (the
    second sampler takes its seed from the trainer's steps output, so it runs after it)."""
    loader = toy_workflow()[LOADER]
    with comfy.client() as client:
        client.run(sample_prompt("base_before", 1, {LOADER: loader}), timeout=RUN_TIMEOUT_S)
        training = training_prompt("base_training", steps=1)
        client.run(sample_prompt("base_after", [TRAINER, 4], training), timeout=RUN_TIMEOUT_S)
    before = sorted(comfy.dirs.output.glob("base_before_*.png"))
    after = sorted(comfy.dirs.output.glob("base_after_*.png"))
    assert len(before) == len(after) == 1
    from PIL import Image

    assert (
        Image.open(before[0]).convert("RGB").tobytes()
        == Image.open(after[0]).convert("RGB").tobytes()
    )


# --- failure 3: interrupting prompt encoding ------------------------------------------------

PROMPT_LINES = 9_996
"""With the toy workflow's 4 prompts, the largest prompt set allowed (10,000)."""
INTERRUPT_DEADLINE_S = 60.0


def test_interrupt_stops_encoding_a_large_prompt_file(comfy: ComfyServer) -> None:
    (comfy.dirs.input / "ten_thousand.txt").write_text(
        "\n".join(f"a shape number {i}" for i in range(PROMPT_LINES)), encoding="utf-8"
    )
    prompt = training_prompt("encode_interrupt")
    prompt[PROMPTS]["inputs"]["prompt_file"] = "ten_thousand.txt"
    with comfy.client() as client:
        prompt_id = client.queue_prompt(prompt)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            running = [
                e
                for e in client.events(prompt_id)
                if e.get("type") == "executing" and (e.get("data") or {}).get("node") == PROMPTS
            ]
            if running:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        client.interrupt()
        began = time.monotonic()
        with pytest.raises(ExecutionInterrupted) as info:
            client.wait_for(prompt_id, timeout=INTERRUPT_DEADLINE_S)
        stopped_after = time.monotonic() - began
    print(f"\nprompt encoding stopped {stopped_after:.1f} s after POST /interrupt")
    assert info.value.data.get("node_id") == PROMPTS
