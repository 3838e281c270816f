"""The one private Keras API comp uses, in one place, with the versions it was checked on.

`Optimizer._get_variable_index(variable)` gives a variable's slot in the optimizer's per-variable
lists (momentum buffers, lookahead averages); Keras's own guide to writing an optimizer uses it in
`update_step`, and no public equivalent exists. Checked on Keras 3.15.1 (pyproject pins the range).
"""

from __future__ import annotations

CHECKED_KERAS = "3.15.1"


def variable_index(optimizer, variable) -> int:
    """The slot of `variable` in `optimizer`'s per-variable lists (set up by Optimizer.build)."""
    return optimizer._get_variable_index(variable)
