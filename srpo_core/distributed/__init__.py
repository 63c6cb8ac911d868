"""The SRPO engine beyond one GPU: ``python -m srpo_core.train`` under torchrun.

- ``runfile`` / ``tomlconf`` / ``overrides``: the run file, its ``--section.key value``
  command-line overrides and ``--help``, all derived from the config dataclasses;
- ``components`` / ``diffusers_provider``: what a model provider returns, the default one;
- ``flux_velocity`` / ``lora`` / ``conditioning``: FLUX adapter, LoRA, conditioning cache;
- ``parallel`` / ``trainer`` / ``dcp``: ranks, per-sample streams, DDP / FSDP2, checkpoints;
- ``cli`` / ``progress``: what the command does, rank-0 reporting.

Nothing here is imported by ``import srpo_core`` itself.
"""
