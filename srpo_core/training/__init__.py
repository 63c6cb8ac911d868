"""SRPO training loop (DESIGN.md 3.4): Direct-Align micro-steps, rewards, AdamW, checkpoints.

Generic over a :class:`~srpo_core.protocols.ConditionedVelocity` model, a differentiable
:class:`~srpo_core.protocols.Decoder`, a :class:`~srpo_core.protocols.RewardFn` and a list of
trainable parameters; it never needs to know what model it trains.
"""

from .checkpoint import CheckpointMismatchError, TrainingState, load_checkpoint, save_checkpoint
from .config import RegularizerConfig, TrainConfig, config_hash
from .data import PromptItem, cat_conds
from .loop import SRPOTrainer, StepMetrics, TrainingDivergedError, TrainResult, train
from .memory import MemoryConfig

__all__ = [
    "CheckpointMismatchError",
    "MemoryConfig",
    "PromptItem",
    "RegularizerConfig",
    "SRPOTrainer",
    "StepMetrics",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingState",
    "cat_conds",
    "config_hash",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
