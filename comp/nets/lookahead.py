"""airbench's lookahead schedule, shared by the optimizer (weights) and AirbenchBatchNorm (statistics).

Every LOOKAHEAD_EVERY steps the average moves toward the current values and the values jump to
the average: average <- keep*average + (1-keep)*values; values <- average, with
keep = decay**EVERY * (k/T)**3 at step k (from 1) of T, so early training runs free and the end
is averaged hardest. The first sync starts the average as the values themselves (airbench starts
it from the initial weights, whose share there is 0.95**5 * (5/T)**3, under 1e-6 for T >= 476).
No sync after step T: steps past T (the rest of a fractional last epoch) must change nothing.

keras.ops only and no Python branches on tensors, so it runs inside a jitted step on every backend.
"""

from __future__ import annotations

from keras import ops

LOOKAHEAD_EVERY = 5  # airbench syncs every 5 steps: often enough to steady SGD, rare enough to be free


def lookahead_pull(step, decay: float, total_steps: int, schedule_step=None):
    """(sync, pull) at optimizer step `step` (counted from 1): 1.0 where the values jump to the
    average, and how far the average moves toward the values there (0 elsewhere).

    `schedule_step`: where the schedule stands at that step (comp.engine.step.schedule_step), if a
    deadline made it run faster than the steps; syncs still come every LOOKAHEAD_EVERY steps.
    """
    step, total_steps = ops.cast(step, "float32"), ops.cast(total_steps, "float32")
    at = step if schedule_step is None else ops.cast(schedule_step, "float32")
    on_time = ops.logical_and(ops.equal(ops.mod(step, LOOKAHEAD_EVERY), 0.0), at <= total_steps)
    sync = ops.cast(on_time, "float32")
    first_sync = ops.cast(ops.equal(step, float(LOOKAHEAD_EVERY)), "float32")
    progress = ops.minimum(at / total_steps, 1.0)
    keep = decay**LOOKAHEAD_EVERY * progress**3 * (1.0 - first_sync)
    return sync, sync * (1.0 - keep)
