"""Augmentation and batch mixing that run inside the compiled train step.

Everything here uses `keras.ops` and `keras.random.SeedGenerator` only, so it runs on
TensorFlow, JAX and PyTorch and stays jittable: Keras's own RandomTranslation, RandomRotation,
RandomZoom and RandomCrop set `supports_jit = False` and would silently drop a JAX model to
eager mode (over 100x slower on a GPU). Flips and crops (whole-pixel translations) are a
pad and one gather of every output pixel (`crop_and_flip`); only rotation, zoom and fractional
shifts need `ops.image.affine_transform`, whose bilinear sampling costs 20-50x more (a 512-image
batch on a CPU: 74 ms against 3 ms on JAX), and which then does the flip and crop as well.

Presets (comma-separated, composable):
    none        nothing
    flip        horizontal flip
    alt-flip    alternating flip (airbench): each image is mirrored in every other epoch, so
                any two consecutive epochs show it both ways instead of a coin flip each time
    simple      rotation +-30 deg, brightness 0.8-1.0, zoom 0.3, shift 0.2, flip (the classic
                ImageDataGenerator settings of competition notebooks)
    flip-crop   pad-4 random crop + flip (the CIFAR standard)
    alt-flip-crop  pad-4 random crop + alternating flip (the fast nets' default)
    cutout      a random square of half the image side set to zero
    crop=N      a pad-N random crop (e.g. "alt-flip,crop=2", airbench94's 2-px translation)
    reflect     fill what shifts, crops, rotations and zooms uncover with the mirrored image
                instead of black (the edge pixel repeated: numpy's "symmetric", not airbench's pad)
    reflect-crop=N  airbench's crop: pad N px by reflection without repeating the edge pixel
                (PyTorch's and numpy's "reflect"), then a random whole-pixel 32x32 crop
    cutout-inside=N  airbench96's cutout: an N-px square lying wholly inside the image, filled
                with the mean colour (airbench's 0 after normalisation)
    airbench94  alt-flip,reflect-crop=2
    airbench96  alt-flip,reflect-crop=4,cutout-inside=12
    rrc         random-resized-crop (torchvision's RandomResizedCrop): a random box of 25-100% of the
                area and aspect 3/4-4/3, resized back to the input size (bilinear)
    trivial     TrivialAugment: one op per image, drawn uniformly from TRIVIAL_OPS, with a uniformly
                drawn magnitude (see `trivial_augment`)
    jitter      colour jitter: brightness, contrast and saturation factors in 1 +- 0.4, hue +- 0.1 turn
    photo       rrc,flip,trivial (torchvision's classification recipe without random erasing): for
                real photos at 64 px and up, where the whole-pixel presets above barely move anything
"""

from __future__ import annotations


import numpy as np

from comp.core.errors import CompError

PRESETS: dict[str, dict] = {
    "none": {},
    "flip": {"flip": True},
    "simple": {"flip": True, "rotation": 30.0, "zoom": 0.3, "shift": 0.2, "brightness": (0.8, 1.0)},
    "flip-crop": {"flip": True, "crop_pad": 4},
    "alt-flip": {"flip": "alternate"},
    "alt-flip-crop": {"flip": "alternate", "crop_pad": 4},
    "cutout": {"cutout": 0.5},
    "reflect": {"fill": "reflect"},
    "airbench94": {"flip": "alternate", "reflect_crop": 2},
    "airbench96": {"flip": "alternate", "reflect_crop": 4, "cutout_px": 12},
    # torchvision's RandomResizedCrop draws 8-100% of the area for 224-px ImageNet crops; we draw
    # 25-100%, as a 64-128 px photo keeps little of its object below a quarter (a choice, not measured).
    "rrc": {"rrc_scale": (0.25, 1.0), "rrc_ratio": (3 / 4, 4 / 3)},
    "trivial": {"trivial": True},
    "jitter": {"jitter": (0.4, 0.4, 0.4, 0.1)},  # brightness, contrast, saturation (factor 1 +- x), hue (turns)
    "photo": {"rrc_scale": (0.25, 1.0), "rrc_ratio": (3 / 4, 4 / 3), "flip": True, "trivial": True},
}

# TrivialAugment's ops (Mueller & Hutter 2021), each at most this strong at magnitude 1; the magnitude
# is drawn uniformly in [0, 1] per image, the signed ops' direction by a coin. The ranges are
# RandAugment's (the paper's "RA" space), not TrivialAugmentWide's 135-degree rotations, which
# destroy small images. Left out: equalize (a per-image, per-channel 256-bin histogram and its CDF:
# a scatter that costs more than all the other ops together) and sharpness (a per-image blur
# convolution); every op here is elementwise, or part of the one affine transform all the
# geometric ones share.
TRIVIAL_OPS = ("identity", "brightness", "contrast", "saturation", "posterize", "solarize", "autocontrast",
               "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
TRIVIAL_MAX = {
    "brightness": 0.9,  # factor 1 +- 0.9
    "contrast": 0.9,
    "saturation": 0.9,
    "posterize": 4,  # bits dropped: 8 -> 4 bits per channel
    "solarize": 256.0,  # threshold 256 (nothing) -> 0 (every pixel inverted)
    "rotate": 30.0,  # degrees
    "shear": 0.3,  # x += 0.3 y
    "translate": 0.3,  # fraction of the side
}
# ITU-R 601 luma (what PIL and torchvision call grayscale), and the YIQ transform hue rotates in.
LUMA = (0.299, 0.587, 0.114)
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
# A preview cell names the classes weighing at least this much (below: mixing noise).
LABEL_MIN_WEIGHT = 0.005


MAX_CROP_PAD = 8  # px; a pad-8 crop already hides a quarter of a 32-px image
MAX_CUTOUT_PX = 64  # px; a square wider than the image is cut to its size
# Parts with a size, "name=N": the parameter they set and the largest N.
SIZED_PARTS = {"crop": ("crop_pad", MAX_CROP_PAD), "reflect-crop": ("reflect_crop", MAX_CROP_PAD),
               "cutout-inside": ("cutout_px", MAX_CUTOUT_PX)}
# ops.pad's modes for what a crop uncovers: black, or the "reflect" preset, which mirrors with the
# edge pixel repeated (numpy's "symmetric", what affine_transform's "reflect" fill does).
CROP_FILL_MODES = {"constant": "constant", "reflect": "symmetric"}


def parse_presets(text: str, source: str = "augment") -> dict:
    """Merge comma-separated presets into one parameter dict; later parts win."""
    params: dict = {}
    for name in [p.strip() for p in (text or "none").split(",") if p.strip()]:
        part, sized, amount = name.partition("=")
        if sized and part in SIZED_PARTS:
            key, high = SIZED_PARTS[part]
            if not (amount.isdigit() and 1 <= int(amount) <= high):
                raise CompError(f"{source}: {name!r}: {part}=N takes a whole number of pixels N = 1..{high}")
            params[key] = int(amount)
            continue
        if name not in PRESETS:
            sizes = ", ".join(f"{part}=N (N = 1..{high})" for part, (_, high) in SIZED_PARTS.items())
            raise CompError(f"{source}: augmentation preset {name!r} unknown; choose from {', '.join(PRESETS)} "
                            f"or {sizes}")
        params.update(PRESETS[name])
    return params
