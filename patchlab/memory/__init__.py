"""Memory: what a computation needs at its peak, and which patch mode fits a budget.

- :mod:`.profiler`: the tensor-level profiler (knows nothing of diffusion): :class:`MemoryProfiler`,
  :func:`profile`, :func:`estimating` (fake tensors), :class:`MemoryReport`.
- :mod:`.steps`: a sampling or a training step of a configuration under the profiler
  (:func:`profile_step`, :func:`sweep`).
- :mod:`.planner`: the fastest patch mode whose step fits a budget (:func:`plan`).
- :mod:`.table`: the memory-table row shared by the ``profile`` command, the study and the benchmarks.
- :mod:`.cli`: the ``profile`` and ``plan`` commands.
"""

from .planner import Candidate, Plan, TimeModel, calibrate, candidate_modes, plan  # noqa: F401
from .profiler import CATEGORIES, MemoryProfiler, MemoryReport, estimating, format_bytes, profile  # noqa: F401
from .steps import (OPTIMIZERS, PHASES, Step, StepProfile, build_step, check_phase, profile_step,  # noqa: F401
                    release_memory, sweep, time_interleaved)
from .table import ROW_FIELDS, format_table, with_ratios  # noqa: F401
