"""Test-time augmentation: predict several views of each image and average.

A policy is a list of views; a view is (flip, dx, dy): a horizontal flip and an integer shift
in pixels with zero fill, the same transforms training saw, so the net knows them.

Policies are named (`none`, `flip`, `flip-shift`, `airbench`) or written as a list of parts:
    flip        add the mirror image of every view
    shift=N     add the four 1-axis translations by N pixels (right, left, down, up)
e.g. `--tta flip,shift=1` is 10 views: {as is, 4 shifts} x {plain, mirrored}. A list is
stored under a canonical name (`flip+shift1`), which is also accepted back and names the files.

The first view of every policy is the image as is, so the plain ("none") prediction comes
for free whenever a policy is predicted; that is how `comp predict` reports the TTA gain.

Averaging: the views' probabilities (softmax, then mean) or their logits (mean, then softmax,
a geometric mean of the probabilities). `comp predict` measures both on out-of-fold rows every
time it runs; DEFAULT_AVERAGE below says which won and by how much.

`airbench` is airbench's own TTA (tta_level 2): the image and its mirror with weight 1/4 each,
and both moved one pixel diagonally either way, with mirrors, 1/8 each; borders filled by
reflection without repeating the edge pixel, as it pads; and the weighted mean of the logits,
whatever average is asked for (WEIGHTED_POLICIES): the policy is the reference's, exactly.

Prediction runs every view of a batch in one compiled call (comp.engine.inference); `view` below is
the NumPy reference of what that call does to each image.

`comp train --tta` takes the named policies only (RunConfig.validate checks TTA_POLICIES);
lists work in `comp predict` and `comp ensemble`.
"""

from __future__ import annotations

from dataclasses import dataclass

from comp.core.errors import CompError
from comp.config.augment_presets import parse_presets

View = tuple[bool, int, int]

TTA_POLICIES: dict[str, list[View]] = {
    "none": [(False, 0, 0)],
    "flip": [(False, 0, 0), (True, 0, 0)],
    # airbench's policy: both flips, each also shifted by one or two pixels.
    "flip-shift": [(f, dx, dy) for f in (False, True) for dx, dy in ((0, 0), (1, 1), (-1, -1), (2, 0), (0, -2))],
    # airbench's six: x, flip(x), the reflect-padded crops [0:32, 0:32] (content down-right 1) and
    # [2:34, 2:34] (up-left 1), and their mirrors (a mirror moves the content the other way in x).
    "airbench": [(False, 0, 0), (True, 0, 0), (False, 1, 1), (True, -1, 1), (False, -1, -1), (True, 1, -1)],
}


@dataclass(frozen=True)
class Weighting:
    """How a policy's views combine when they are not equal: their weights, fill and average."""

    weights: tuple[float, ...]  # one per view, summing to 1
    fill: str  # what a shift uncovers: "zero", or "reflect" (numpy's: no edge repeat)
    average: str  # always this average (one of AVERAGES), whatever the caller asks for


WEIGHTED_POLICIES = {"airbench": Weighting((1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8), "reflect", "logits")}

AVERAGES = ("probs", "logits")
# Mean of probabilities, chosen on evidence: `comp predict` on four CIFAR-10 runs (5,000 OOF
# rows each; baseline and resnet, 5-15 epochs; 6 policy/run pairs) gave equal accuracy within
# +-0.001 either way (probs ahead in 4 of 6), and log-loss within 0.002 on the baseline runs
# but 0.012 lower with probabilities on the resnet (1.728 vs 1.741 flip-shift, 1.739 vs 1.750
# with 18 views), likely because one confidently wrong view can dominate a logit mean.
# Train writes val/test_probs.<policy>.npy with this default; other averages get an @ tag.
DEFAULT_AVERAGE = "probs"
MAX_SHIFT = 8  # px; flip-crop trains shifts up to 4, and 8 already hides a quarter of a 32-px image


# -- policies ------------------------------------------------------------------------------


def _custom_views(parts: list[str], text: str) -> tuple[list[View], str]:
    """Views and canonical name of a list like ["flip", "shift=1"]."""
    flip, shifts = False, set()
    for part in parts:
        if part == "none":
            continue
        if part == "flip":
            flip = True
            continue
        amount = part.removeprefix("shift").lstrip("=")
        if part.startswith("shift") and amount.isdigit() and 1 <= int(amount) <= MAX_SHIFT:
            shifts.add(int(amount))
            continue
        raise CompError(
            f"--tta {text}: {part!r} is not a policy part; use {', '.join(TTA_POLICIES)} "
            f"or a list of flip and shift=N (N = 1..{MAX_SHIFT}), e.g. flip,shift=1"
        )
    offsets = [(0, 0)] + [o for n in sorted(shifts) for o in ((n, 0), (-n, 0), (0, n), (0, -n))]
    views = [(f, dx, dy) for f in ((False, True) if flip else (False,)) for dx, dy in offsets]
    name = "+".join((["flip"] if flip else []) + [f"shift{n}" for n in sorted(shifts)]) or "none"
    return views, name


def parse_policy(text: str | None) -> str:
    """Canonical name of a named policy or a list; CompError on anything else."""
    text = (text or "none").strip()
    if text in TTA_POLICIES:
        return text
    parts = [p.strip() for p in text.replace("+", ",").split(",") if p.strip()]
    _, name = _custom_views(parts, text)
    return name


def views_for(policy: str) -> list[View]:
    """The views of a policy name (named or canonical list)."""
    if policy in TTA_POLICIES:
        return TTA_POLICIES[policy]
    return _custom_views(policy.split("+"), policy)[0]


def prediction_tag(policy: str, average: str = DEFAULT_AVERAGE) -> str:
    """File-name suffix of a policy's predictions: "" (none), ".flip", ".flip@logits"."""
    if policy == "none" or policy in WEIGHTED_POLICIES:
        return "" if policy == "none" else f".{policy}"  # one view, or an average fixed by the policy
    return f".{policy}" if average == DEFAULT_AVERAGE else f".{policy}@{average}"


def policy_for_augment(augment: str) -> str:
    """TTA only with views the net was trained on: flips if it saw flips, shifts if it saw crops."""
    params = parse_presets(augment)
    if not params.get("flip"):
        return "none"
    if not (params.get("crop_pad") or params.get("reflect_crop") or params.get("shift")):
        return "flip"
    # A shifted view uncovers a border: mirrored, as the net saw it, after mirrored training crops
    # (zero-filled flip-shift would show it black borders it never saw).
    return "airbench" if params.get("reflect_crop") or params.get("fill") == "reflect" else "flip-shift"
