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
"""

from __future__ import annotations

import math

import numpy as np

from .errors import CompError

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
}


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


def crop_and_flip(images, offset_y, offset_x, flip, pad: int, mode: str = "constant"):
    """Per image: pad by `pad` px (ops.pad `mode`), take the window at (offset_y, offset_x) of the
    padded image (offsets 0..2*pad; pad, pad is the image itself), mirrored where `flip`.

    The same pixels as affine_transform's integer translation by (offset - pad), mirrored first,
    without interpolation: the padded batch is one table of pixels and every output pixel is
    gathered from it by its index (on TensorFlow one flat gather beat two per-axis gathers 4x, on
    JAX they are close). keras.ops only: runs inside the compiled step on every backend.
    """
    from keras import ops

    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    mirrored = ops.reshape(flip, (-1, 1))
    if not pad:
        return ops.where(ops.reshape(flip, (-1, 1, 1, 1)), ops.flip(images, axis=2), images)
    padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    columns = ops.arange(width, dtype="int32")[None, :]
    rows = ops.reshape(offset_y, (-1, 1)) + ops.arange(height, dtype="int32")[None, :]  # (batch, height)
    cols = ops.reshape(offset_x, (-1, 1)) + ops.where(mirrored, width - 1 - columns, columns)  # (batch, width)
    image_start = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1, 1)) * (padded_h * padded_w)
    index = image_start + rows[:, :, None] * padded_w + cols[:, None, :]
    pixels = ops.take(ops.reshape(padded, (-1, channels)), ops.reshape(index, (-1,)), axis=0)
    return ops.reshape(pixels, (batch, height, width, channels))


def make_augment_layer(preset: str, seed: int, steps_per_epoch: int = 1):
    """A Keras layer applying the preset to float images (0..255) when training=True.

    `steps_per_epoch` tells the alternating flip where epochs end: the layer counts its training
    calls in a variable (saved with checkpoints), so it needs no callback and stays jittable.
    """
    import keras
    from keras import ops

    params = parse_presets(preset)

    class Augment(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.params = params
            self.seed_generator = keras.random.SeedGenerator(seed)
            if params.get("flip") == "alternate":
                self.steps_seen = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                                  trainable=False, name="steps_seen")
            self.built = True  # its state is made above: nothing for fit to build by tracing a batch

        def _alternating_flip(self, images):
            """+-1 per image: a fixed per-image coin, inverted in every odd epoch.

            The coin is the parity of the image's pixel sum, a hash of its content: the same
            image gets the same coin every epoch without carrying row ids through the pipeline.
            Airbench flips a random half once and then everything in odd epochs; this is the same.
            """
            pixel_sum = ops.cast(ops.sum(images, axis=(1, 2, 3)), "int32")  # exact: < 2**24 for 32x32x3
            epoch = ops.floor_divide(self.steps_seen, steps_per_epoch)
            mirrored = ops.equal(ops.mod(pixel_sum + epoch, 2), 1)
            return ops.where(mirrored, -1.0, 1.0)

        def _uniform(self, shape, low, high):
            return keras.random.uniform(shape, low, high, seed=self.seed_generator)

        def _whole_pixels(self, images):
            """Flip and crop only, with a crop pad the image can mirror (ops.pad's limit): no
            interpolation needed."""
            p = self.params
            small_side = min(images.shape[1], images.shape[2])
            return not any(p.get(k) for k in ("rotation", "zoom", "shift")) and p.get("crop_pad", 0) < small_side

        def _crop_and_flip(self, images):
            p = self.params
            batch = ops.shape(images)[0]
            if p.get("flip") == "alternate":
                flip = self._alternating_flip(images) < 0
            elif p.get("flip"):
                flip = self._uniform((batch,), 0, 1) < 0.5
            else:
                flip = ops.zeros((batch,), "bool")
            pad = p.get("crop_pad", 0)
            offsets = [ops.cast(ops.minimum(ops.floor(self._uniform((batch,), 0, 2 * pad + 1)), 2 * pad), "int32")
                       for _ in range(2)] if pad else [ops.zeros((batch,), "int32")] * 2
            return crop_and_flip(images, *offsets, flip, pad, CROP_FILL_MODES[p.get("fill", "constant")])

        def _affine(self, images):
            """Flip, shift, rotate, zoom and crop in one projective transform per image."""
            p = self.params
            batch = ops.shape(images)[0]
            height, width = images.shape[1], images.shape[2]
            ones = ops.ones((batch,))
            if p.get("flip") == "alternate":
                flip = self._alternating_flip(images)
            elif p.get("flip"):
                flip = ops.where(self._uniform((batch,), 0, 1) < 0.5, -ones, ones)
            else:
                flip = ones
            angle = self._uniform((batch,), -1, 1) * (p.get("rotation", 0.0) * math.pi / 180.0)
            zoom = 1.0 + self._uniform((batch,), -1, 1) * p.get("zoom", 0.0)  # >1 zooms out
            shift_x = self._uniform((batch,), -1, 1) * p.get("shift", 0.0) * width
            shift_y = self._uniform((batch,), -1, 1) * p.get("shift", 0.0) * height
            pad = p.get("crop_pad", 0)
            if pad:  # pad-N random crop = an integer translation in [-N, N], black (or reflected) fill
                shift_x = shift_x + ops.floor(self._uniform((batch,), 0, 2 * pad + 1)) - pad
                shift_y = shift_y + ops.floor(self._uniform((batch,), 0, 2 * pad + 1)) - pad
            cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
            cos, sin = ops.cos(angle) * zoom, ops.sin(angle) * zoom
            # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
            a0, a1 = cos * flip, -sin
            b0, b1 = sin * flip, cos
            a2 = cx - a0 * cx - a1 * cy + shift_x
            b2 = cy - b0 * cx - b1 * cy + shift_y
            zeros = ops.zeros((batch,))
            transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
            return ops.image.affine_transform(images, transform, interpolation="bilinear",
                                              fill_mode=p.get("fill", "constant"), fill_value=0.0,
                                              data_format="channels_last")

        def _cutout(self, images):
            batch = ops.shape(images)[0]
            height, width = images.shape[1], images.shape[2]
            half_h = self.params["cutout"] * height / 2.0
            half_w = self.params["cutout"] * width / 2.0
            cy = self._uniform((batch, 1, 1), 0, height)
            cx = self._uniform((batch, 1, 1), 0, width)
            rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
            cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))
            inside = ops.logical_and(ops.abs(rows - cy) < half_h, ops.abs(cols - cx) < half_w)
            return images * ops.cast(ops.logical_not(inside), images.dtype)[..., None]

        def _reflect_crop(self, images):
            """airbench's translation: reflect-pad (no edge repeat), then a random whole-pixel crop
            per image, gathered along rows and columns."""
            pad = self.params["reflect_crop"]
            batch = ops.shape(images)[0]
            height, width, channels = images.shape[1], images.shape[2], images.shape[3]
            padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")
            offsets = ops.minimum(ops.floor(self._uniform((batch, 2), 0, 2 * pad + 1)), 2 * pad)
            offsets = ops.cast(offsets, "int32")
            rows = offsets[:, :1] + ops.arange(height, dtype="int32")[None, :]  # (batch, height)
            cols = offsets[:, 1:] + ops.arange(width, dtype="int32")[None, :]
            rows = ops.broadcast_to(rows[:, :, None, None], (batch, height, width + 2 * pad, channels))
            cols = ops.broadcast_to(cols[:, None, :, None], (batch, height, width, channels))
            return ops.take_along_axis(ops.take_along_axis(padded, rows, axis=1), cols, axis=2)

        def _cutout_inside(self, images):
            """An N-px square wholly inside each image (corner uniform over the places it fits),
            set to the batch's mean colour: airbench fills 0 after normalising by the data's mean,
            and a batch's mean colour is the data's to about 1/255 at airbench's batch of 1024."""
            batch = ops.shape(images)[0]
            height, width = images.shape[1], images.shape[2]
            side = min(self.params["cutout_px"], height, width)
            top = ops.floor(self._uniform((batch, 1, 1), 0, height - side + 1))
            left = ops.floor(self._uniform((batch, 1, 1), 0, width - side + 1))
            rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
            cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))
            inside = ops.logical_and(ops.logical_and(rows >= top, rows < top + side),
                                     ops.logical_and(cols >= left, cols < left + side))
            mean_colour = ops.mean(images, axis=(0, 1, 2), keepdims=True)
            return ops.where(inside[..., None], mean_colour, images)

        def call(self, images, training=False):
            if not training or not self.params:
                return images
            p = self.params
            if self._whole_pixels(images) and (p.get("flip") or p.get("crop_pad")):
                images = self._crop_and_flip(images)
            elif any(p.get(k) for k in ("flip", "rotation", "zoom", "shift", "crop_pad")):
                images = self._affine(images)
            if p.get("reflect_crop"):
                images = self._reflect_crop(images)
            if p.get("flip") == "alternate":
                self.steps_seen.assign(self.steps_seen + 1)
            if p.get("brightness"):
                low, high = p["brightness"]
                images = images * self._uniform((ops.shape(images)[0], 1, 1, 1), low, high)
            if p.get("cutout"):
                images = self._cutout(images)
            if p.get("cutout_px"):
                images = self._cutout_inside(images)
            return images

        def compute_output_shape(self, input_shape):
            return input_shape

    return Augment(name="augment")


def make_mix_layer(mixup_alpha: float, cutmix_alpha: float, seed: int):
    """A layer mixing each sample with its partner in the (shuffled) batch: mixup and/or cutmix.

    The partner of sample i is sample B-1-i (the batch reversed): batches are already shuffled,
    so this is as random as a permutation and costs nothing. Mixing weights are drawn per sample.
    With both enabled, each batch uses one of the two, chosen by a coin flip.
    """
    import keras
    from keras import ops

    class Mix(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.built = True  # its state is made above: nothing for fit to build by tracing a batch

        def _beta(self, batch, alpha):
            return keras.random.beta((batch,), alpha, alpha, seed=self.seed_generator)

        def _mixup(self, images, targets, partner_images, partner_targets):
            lam = self._beta(ops.shape(images)[0], mixup_alpha)
            mixed = images * lam[:, None, None, None] + partner_images * (1.0 - lam[:, None, None, None])
            return mixed, targets * lam[:, None] + partner_targets * (1.0 - lam[:, None])

        def _cutmix(self, images, targets, partner_images, partner_targets):
            batch = ops.shape(images)[0]
            height, width = images.shape[1], images.shape[2]
            lam = self._beta(batch, cutmix_alpha)
            side = ops.sqrt(1.0 - lam)  # the box covers 1 - lambda of the area
            cy = keras.random.uniform((batch,), 0, height, seed=self.seed_generator)
            cx = keras.random.uniform((batch,), 0, width, seed=self.seed_generator)
            rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
            cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))
            inside = ops.logical_and(
                ops.abs(rows - cy[:, None, None]) < (side * height / 2.0)[:, None, None],
                ops.abs(cols - cx[:, None, None]) < (side * width / 2.0)[:, None, None],
            )
            mask = ops.cast(inside, images.dtype)[..., None]
            mixed = images * (1.0 - mask) + partner_images * mask
            area = ops.mean(ops.cast(inside, "float32"), axis=(1, 2))  # the real share after clipping
            return mixed, targets * (1.0 - area[:, None]) + partner_targets * area[:, None]

        def call(self, images, targets, training=False):
            if not training:
                return images, targets
            partner_images, partner_targets = ops.flip(images, axis=0), ops.flip(targets, axis=0)
            args = (images, targets, partner_images, partner_targets)
            if mixup_alpha and cutmix_alpha:
                x_mix, y_mix = self._mixup(*args)
                x_cut, y_cut = self._cutmix(*args)
                use_cut = keras.random.uniform((), 0, 1, seed=self.seed_generator) < 0.5
                return ops.where(use_cut, x_cut, x_mix), ops.where(use_cut, y_cut, y_mix)
            if mixup_alpha:
                return self._mixup(*args)
            if cutmix_alpha:
                return self._cutmix(*args)
            return images, targets

    return Mix(name="mix")


def preview_grid(dataset, preset: str, mixup: float, cutmix: float, out_path, seed: int = 0,
                 rows: int = 6, cols: int = 8):
    """Write a PNG: the first column holds originals, the others augmented (and mixed) copies."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import save_figure

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset.train_x), size=rows, replace=False)
    images = dataset.train_x[chosen].astype("float32")
    targets = keras.ops.one_hot(dataset.train_y[chosen], dataset.num_classes)
    augment = make_augment_layer(preset, seed)  # one step per "epoch": alternating flips alternate per column
    mix = make_mix_layer(mixup, cutmix, seed)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.25), squeeze=False)
    for c in range(cols):
        if c == 0:
            batch = images
        else:
            batch, _ = mix(augment(images, training=True), targets, training=True)
        batch = np.clip(keras.ops.convert_to_numpy(batch), 0, 255).astype(np.uint8)
        for r in range(rows):
            axes[r, c].imshow(batch[r])
            axes[r, c].axis("off")
    axes[0, 0].set_title("original", fontsize=8)
    fig.suptitle(f"augment={preset} mixup={mixup} cutmix={cutmix}", fontsize=9)
    save_figure(out_path, fig)
    plt.close(fig)
    return out_path
