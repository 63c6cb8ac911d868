"""Block offloading (srpo_core.offload): at most the configured number of blocks resident, every
block resident when it runs (rollout, training forward, backward's recomputation), and the same
trained LoRA as without offloading."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import torch
from torch import Tensor

from srpo_core.inplace_blocks import checkpoint_forward
from srpo_core.offload import BlockOffloader, OffloadConfig

WIDTH, RANK, BLOCKS = 16, 2, 6
ROLLOUT_STEPS, TRAIN_STEPS = 3, 3


class Block(torch.nn.Module):
    """A residual block ``x + tanh(norm(x) W^T + s B A x)`` with frozen W and a LoRA (A, B)
    held outside the block (as the trainer's adapters are); it adds to its input in place,
    like ComfyUI's Flux blocks, and records whether its weight was a device copy when it ran."""

    def __init__(self, g: torch.Generator, lora: dict[str, Tensor], index: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, WIDTH).requires_grad_(False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(WIDTH, WIDTH, generator=g) / WIDTH**0.5)
            self.linear.bias.copy_(torch.randn(WIDTH, generator=g) / 10)
        self.register_buffer("scale", torch.rand(WIDTH, generator=g) + 0.5)
        self.lora, self.index = lora, index
        self.ran_with: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.ran_with.append(self.linear.weight.data_ptr())
        a, b = self.lora[f"{self.index}.A"], self.lora[f"{self.index}.B"]
        h = torch.nn.functional.layer_norm(x, (WIDTH,)) * self.scale
        x += torch.tanh(self.linear(h) + (h @ a.T) @ b.T)
        return x


def build(seed: int = 0) -> tuple[list[Block], dict[str, torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for i in range(BLOCKS):
        lora[f"{i}.A"] = torch.nn.Parameter(torch.randn(RANK, WIDTH, generator=g) / 4)
        lora[f"{i}.B"] = torch.nn.Parameter(torch.randn(WIDTH, RANK, generator=g) / 4)
    return [Block(g, lora, i) for i in range(BLOCKS)], lora  # type: ignore[arg-type]


@contextmanager
def checkpointed(blocks: list[Block]) -> Iterator[None]:
    """Reentrant block checkpointing around whatever forward the blocks have (the offloader's
    wrapper when it is attached first), as ``nodes.block_wrappers.checkpointed_forwards``."""
    saved = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.__dict__["forward"] = checkpoint_forward(block.forward)
    try:
        yield
    finally:
        for block, previous in zip(blocks, saved, strict=True):
            if previous is None:
                del block.__dict__["forward"]
            else:
                block.__dict__["forward"] = previous


def run(blocks: list[Block], x: Tensor) -> Tensor:
    for block in blocks:
        x = block(x)
    return x


def train(config: OffloadConfig | None) -> tuple[dict[str, Tensor], BlockOffloader | None]:
    """A rollout without grad, then a forward with grad, backward and AdamW, TRAIN_STEPS times;
    returns the trained LoRA and the offloader."""
    blocks, lora = build()
    optimizer = torch.optim.AdamW(lora.values(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    offloader = None
    with ExitStack() as stack:
        if config is not None:
            # the "device" is the CPU: a device copy is a clone (same bits, other storage)
            offloader = BlockOffloader(
                blocks, torch.device("cpu"), config, move=lambda t, device: t.clone()
            )
            stack.enter_context(offloader.attached())
        stack.enter_context(checkpointed(blocks))
        for _ in range(TRAIN_STEPS):
            x = torch.randn(4, WIDTH, generator=g)
            with torch.no_grad():
                for _ in range(ROLLOUT_STEPS):
                    x = x + 0.1 * run(blocks, x.clone())
            target = torch.randn(4, WIDTH, generator=g)
            loss = (run(blocks, x.clone()) - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if offloader is not None:
            host = {t.data_ptr() for hosts in offloader.host for t in hosts}
            calls = [p for block in blocks for p in block.ran_with]
            assert calls and not host.intersection(calls), "a block ran on its host copy"
    assert all(optimizer.param_groups[0]["params"][i] is p for i, p in enumerate(lora.values()))
    return {k: v.detach().clone() for k, v in lora.items()}, offloader


@pytest.mark.parametrize(("resident", "prefetch"), [(1, 0), (2, 1), (3, 2)])
def test_offloading_keeps_few_blocks_resident_and_trains_the_same_lora(
    resident: int, prefetch: int
) -> None:
    reference, _ = train(None)
    trained, offloader = train(OffloadConfig(resident_blocks=resident, prefetch=prefetch))
    assert offloader is not None
    assert offloader.max_resident <= resident
    assert offloader.max_resident == resident or resident == 1
    # the same arithmetic on bit-identical copies: the same LoRA, exactly
    for name, value in reference.items():
        assert torch.equal(trained[name], value), name
    assert any(not torch.equal(value, build()[1][name]) for name, value in trained.items())
    # each step: rollout (3 forward passes), forward, recomputation: at least one load per
    # block per pass beyond the resident ones
    per_block = offloader.block_bytes(0)
    assert offloader.moved_bytes >= TRAIN_STEPS * 5 * (BLOCKS - resident) * per_block


def test_exit_puts_every_tensor_back_where_it_was() -> None:
    blocks, _ = build()
    before = {name: tensor.clone() for i, b in enumerate(blocks) for name, tensor in _named(b, i)}
    offloader = BlockOffloader(blocks, torch.device("cpu"), OffloadConfig(2, 1))
    with offloader.attached():
        run(blocks, torch.zeros(1, WIDTH))
    after = {name: tensor for i, b in enumerate(blocks) for name, tensor in _named(b, i)}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all("forward" not in b.__dict__ for b in blocks)


def _named(block: Block, index: int) -> Iterator[tuple[str, Tensor]]:
    for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
        yield f"{index}.{name}", tensor


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="must be below resident_blocks"):
        OffloadConfig(resident_blocks=2, prefetch=2)
    with pytest.raises(ValueError, match=">= 0"):
        OffloadConfig(resident_blocks=-1)
    assert not OffloadConfig().enabled


def test_repeated_passes_stream_only_the_unpinned_blocks() -> None:
    """Rollout-like passes 0..N-1 again and again: resident - prefetch - 1 blocks stay pinned
    (loaded once), so each later pass copies only the other N - pinned blocks (least recently
    used eviction alone would copy all N every pass); training still gives the same LoRA."""
    config = OffloadConfig(resident_blocks=4, prefetch=1)
    blocks, _ = build()
    offloader = BlockOffloader(blocks, torch.device("cpu"), config, move=lambda t, d: t.clone())
    pinned = config.resident_blocks - config.prefetch - 1
    assert offloader.pinned == frozenset(range(pinned)), "equal sizes: the earliest are pinned"
    per_block = offloader.block_bytes(0)
    moved = []
    with offloader.attached(), torch.no_grad():
        x = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(3))
        for _ in range(4):
            before = offloader.moved_bytes
            x = run(blocks, x.clone())
            moved.append((offloader.moved_bytes - before) // per_block)
            assert offloader.pinned <= set(offloader.resident())
            assert len(offloader.resident()) <= config.resident_blocks
    assert moved == [BLOCKS, *[BLOCKS - pinned] * 3], moved
    reference, _ = train(None)
    trained, _ = train(config)
    for name, value in reference.items():
        assert torch.equal(trained[name], value), name


def test_the_largest_blocks_are_pinned() -> None:
    from srpo_core.offload import pinned_blocks

    assert pinned_blocks([3, 9, 3, 9, 1], 3) == {1, 3, 0}
    assert pinned_blocks([3, 9], 0) == frozenset() and pinned_blocks([3, 9], -1) == frozenset()
