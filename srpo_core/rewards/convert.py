"""Convert a reward checkpoint to .safetensors: ``python -m srpo_core.rewards.convert IN [OUT]``.

HPSv2.1 is published as a pickled ``HPS_v2.1_compressed.pt``; ComfyUI's missing-models dialog
downloads only ``.safetensors``/``.sft`` files, and a safetensors file needs no unpickling at all.
The input is read as the loaders read it (``torch.load(weights_only=True)``, a ``state_dict``
wrapper and DDP's ``module.`` prefix removed), so the output loads to the same tensors. OUT
defaults to IN with the suffix ``.safetensors``; an existing OUT is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file

from .loading import RewardModelLoadError, load_state_dict_file

SUFFIX = ".safetensors"


def convert(source: Path, target: Path | None = None) -> Path:
    """Write ``source``'s tensors to ``target`` (default: ``source`` with SUFFIX); returns it.

    Raises FileExistsError when ``target`` exists (nothing is written) and RewardModelLoadError
    for a file that is not a tensor-only checkpoint.
    """
    target = target if target is not None else source.with_suffix(SUFFIX)
    if target.suffix.lower() != SUFFIX:
        raise ValueError(f"the output must end in {SUFFIX}, got {target.name}")
    if target.exists():
        raise FileExistsError(f"{target} exists: remove it or name another output file")
    state = load_state_dict_file(source)
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    tmp = target.with_name(f"{target.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.rename(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("source", type=Path, help="the .pt/.pth/.bin/.ckpt reward checkpoint")
    parser.add_argument("target", type=Path, nargs="?", help="the .safetensors file to write")
    options = parser.parse_args(argv)
    try:
        written = convert(options.source, options.target)
    except (FileExistsError, FileNotFoundError, ValueError, RewardModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
