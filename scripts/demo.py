"""The main job on the embedded default: SRPO fine-tunes the toy world through a real ComfyUI.

Starts ComfyUI headless (provisioned by scripts/comfy_harness or yours via SRPO_COMFYUI_DIR), queues
workflows/api/srpo_finetune_toyworld.json over HTTP exactly as a headless user would, prints
progress, and collects everything into one folder:

    grid.png        before (top row) / after (bottom row) samples from the same seeds
    loss.png        the loss graph (stock Plot Loss Graph node)
    lora.safetensors  the trained LoRA (Save LoRA (SRPO) node)
    summary.json    mean brightness, mean SRP reward ("bright" vs "dark") and the fraction of
                    saturated (blown-out or crushed) pixels before and after, the on-target gain,
                    and the trainer's reward-hacking guard report

Run: ``bash scripts/demo.sh`` (sets up .venv first) or ``.venv/bin/python scripts/demo.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from scripts.comfy_harness.provision import ComfyUISetupError, ensure_comfyui, link_instructions  # noqa: E402
from scripts.comfy_harness.server import ComfyServer  # noqa: E402
from srpo_core.image_signals import saturated_fraction  # noqa: E402
from srpo_core.rewards import ClipReward, score_control_pair  # noqa: E402
from toyworld.build.data import mean_luminance  # noqa: E402
from toyworld.runtime.config import default_assets_dir, load_config  # noqa: E402
from toyworld.runtime.reward import load_local_dir  # noqa: E402

WORKFLOW = REPO_ROOT / "workflows" / "api" / "srpo_finetune_toyworld.json"
UI_WORKFLOW = REPO_ROOT / "workflows" / "srpo_finetune_toyworld.json"
DEFAULT_OUT = REPO_ROOT / "output" / "toyworld_demo"
BEFORE_PREFIX, AFTER_PREFIX = "srpo_toy_before", "srpo_toy_after"
POSITIVE, NEGATIVE = "bright", "dark"
TIMEOUT_S = 1800.0
PROGRESS_EVERY_S = 2.0


def node_of_type(prompt: dict[str, Any], class_type: str) -> dict[str, Any]:
    """The single node of ``class_type`` in an API prompt."""
    found = [n for n in prompt.values() if n["class_type"] == class_type]
    if len(found) != 1:
        raise ValueError(f"expected one {class_type} node in {WORKFLOW.name}, found {len(found)}")
    return found[0]


def sample_prompt(prompt: dict[str, Any]) -> str:
    """The (single) non-empty CLIPTextEncode text the before/after samples use."""
    texts = {
        n["inputs"]["text"]
        for n in prompt.values()
        if n["class_type"] == "CLIPTextEncode" and n["inputs"]["text"].strip()
    }
    if len(texts) != 1:
        raise ValueError(f"expected one sample prompt in {WORKFLOW.name}, found {sorted(texts)}")
    return texts.pop()


def output_images(result: Any, prompt: dict[str, Any], class_type: str) -> list[dict[str, str]]:
    """The images (history entries) that the nodes of ``class_type`` produced, in node order."""
    ids = sorted(k for k, n in prompt.items() if n["class_type"] == class_type)
    return [image for k in ids for image in result.history["outputs"].get(k, {}).get("images", [])]


def output_texts(result: Any, prompt: dict[str, Any], class_type: str) -> list[str]:
    """The text the nodes of ``class_type`` showed (their ui "text"), in node order."""
    ids = sorted(k for k, n in prompt.items() if n["class_type"] == class_type)
    return [t for k in ids for t in result.history["outputs"].get(k, {}).get("text", [])]


def fetch_images(client: Any, images: list[dict[str, str]], prefix: str) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: the images whose file names start with ``prefix``, over /view."""
    chosen = sorted(
        (i for i in images if i["filename"].startswith(prefix)), key=lambda i: i["filename"]
    )
    arrays = [
        np.asarray(Image.open(io.BytesIO(fetch(client, i))).convert("RGB"), dtype=np.float32)
        for i in chosen
    ]
    return torch.from_numpy(np.stack(arrays) / 255.0).permute(0, 3, 1, 2)


def fetch(client: Any, image: dict[str, str]) -> bytes:
    """The bytes of one output/temp image, through GET /view."""
    return bytes(client.view(image["filename"], image["subfolder"], image["type"]))


def grid(before: torch.Tensor, after: torch.Tensor) -> Image.Image:
    """Two rows: before on top, after below (N images each)."""
    rows = [torch.cat(list(batch), dim=2) for batch in (before, after)]
    image = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().byte().numpy()
    return Image.fromarray(image)


def mean_reward(images: torch.Tensor, prompt: str) -> float:
    """Mean SRP reward ``<f_img, f("bright. p") - f("dark. p")>`` under the toy reward model."""
    model, tokenize = load_local_dir(default_assets_dir() / "reward")
    reward = ClipReward(model, tokenize)
    with torch.no_grad():
        terms = score_control_pair(
            reward, images, [prompt] * len(images), POSITIVE, NEGATIVE, mode="srp"
        )
    return float(terms.total.mean())


def print_progress(client: Any, prompt_id: str, started: float) -> Any:
    """Wait for the prompt, printing the trainer's progress every few seconds."""
    last = 0.0
    while True:
        try:
            return client.wait_for(prompt_id, timeout=PROGRESS_EVERY_S)
        except TimeoutError:
            pass
        if time.monotonic() - started > TIMEOUT_S:
            raise TimeoutError(f"the toy workflow did not finish in {TIMEOUT_S:.0f} s")
        steps = [e["data"] for e in client.events(prompt_id) if e.get("type") == "progress"]
        if steps and time.monotonic() - last > PROGRESS_EVERY_S:
            last = time.monotonic()
            step = steps[-1]
            print(f"[demo] {step['node']}: {step['value']}/{step['max']}", flush=True)


def run(out: Path, steps: int | None, seed: int | None) -> dict[str, Any]:
    """Run the toy workflow in a fresh ComfyUI and write the results into ``out``."""
    prompt = json.loads(WORKFLOW.read_text())
    trainer = node_of_type(prompt, "SRPODirectAlignTrainer")
    if steps is not None:
        trainer["inputs"]["steps"] = steps
    if seed is not None:
        trainer["inputs"]["seed"] = seed
    try:
        install = ensure_comfyui()
    except ComfyUISetupError as error:
        raise SystemExit(f"[demo] cannot provide ComfyUI: {error}") from error
    if install.pack_link is None:
        raise SystemExit(link_instructions(install.root))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    began = time.monotonic()
    with ComfyServer(install.root, out / "comfyui", python=install.python) as server:
        print(f"[demo] ComfyUI up in {server.startup_seconds:.1f} s at {server.url}", flush=True)
        with server.client() as client:
            extra = {"extra_pnginfo": {"workflow": json.loads(UI_WORKFLOW.read_text())}}
            prompt_id = client.queue_prompt(prompt, extra_data=extra)
            result = print_progress(client, prompt_id, time.monotonic())
            saved = output_images(result, prompt, "SaveImage")
            before = fetch_images(client, saved, BEFORE_PREFIX)
            after = fetch_images(client, saved, AFTER_PREFIX)
            for image in output_images(result, prompt, "LossGraphNode"):
                (out / "loss.png").write_bytes(fetch(client, image))
            guard = output_texts(result, prompt, "PreviewAny")
        for lora in sorted((server.dirs.output / "loras").glob("*.safetensors")):
            shutil.copy(lora, out / "lora.safetensors")
    grid(before, after).save(out / "grid.png")
    text = sample_prompt(prompt)
    brightness = [float(mean_luminance(images).mean()) for images in (before, after)]
    saturated = [float(saturated_fraction(images).mean()) for images in (before, after)]
    summary = {
        "prompt": text,
        "control_words": {"positive": POSITIVE, "negative": NEGATIVE},
        "trainer_steps": trainer["inputs"]["steps"],
        "samples": len(before),
        "mean_brightness": {"before": brightness[0], "after": brightness[1]},
        "on_target_gain": brightness[1] - brightness[0],
        "saturated_pixels": {"before": saturated[0], "after": saturated[1]},
        "mean_reward_srp": {"before": mean_reward(before, text), "after": mean_reward(after, text)},
        "guard_report": guard,
        "seconds": round(time.monotonic() - began, 1),
        "toy_world": load_config(default_assets_dir()).world,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--steps", type=int, default=None, help="override the trainer's steps")
    parser.add_argument("--seed", type=int, default=None, help="override the trainer's seed")
    args = parser.parse_args()
    summary = run(args.out, args.steps, args.seed)
    print(json.dumps(summary, indent=2))
    print(f"[demo] results in {args.out}")


if __name__ == "__main__":
    main()
