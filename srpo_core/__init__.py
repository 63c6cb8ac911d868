"""SRPO engine: Direct-Align and Semantic Relative Preference optimisation for flow models.

Imports only torch and libraries, never ComfyUI. See README.md ("Engine API") for an overview.
"""

from .direct_align import direct_align, one_step_x0, x0_from_eps, x_t
from .schedules import TrainingInterval, shift_sigma, sigma_schedule

__all__ = [
    "TrainingInterval",
    "direct_align",
    "one_step_x0",
    "shift_sigma",
    "sigma_schedule",
    "x0_from_eps",
    "x_t",
]
