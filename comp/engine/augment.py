"""In-graph augmentation: keras.ops on whole batches inside the compiled train step, from the presets
of comp.config.augment_presets (where the vocabulary and its docs live); mixup and cutmix."""

from __future__ import annotations

import math

import numpy as np

from comp.config.augment_presets import (
    CROP_FILL_MODES,
    LUMA,
    RGB_TO_YIQ,
    TRIVIAL_MAX,
    TRIVIAL_OPS,
    parse_presets,
)


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


def _affine_rows(a0, a1, b0, b1, shift_x, shift_y, height: int, width: int):
    """The (batch, 8) transforms of ops.image.affine_transform for a per-image 2x2 matrix about the
    image centre plus a shift: output pixel o = (x, y) samples the input at centre + M (o - centre)
    + shift."""
    from keras import ops

    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = cx - a0 * cx - a1 * cy + shift_x
    b2 = cy - b0 * cx - b1 * cy + shift_y
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp(images, geometry, fill: str = "constant"):
    """Move the pixels by a geometry, a per-image (a0, a1, b0, b1, shift_x, shift_y) as _affine_rows
    takes it: bilinear, `fill` (affine_transform's fill_mode) for what lies outside the image."""
    from keras import ops

    transform = _affine_rows(*geometry, images.shape[1], images.shape[2])
    return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=fill,
                                      fill_value=0.0, data_format="channels_last")


def compose(first, second):
    """One geometry for warping by `first` and then by `second`: one bilinear pass instead of two
    (and no blur of a blur). Output o of the second samples first's output at G2(o), which samples
    the input at G1(G2(o)): the matrices multiply, the second's shift goes through the first's matrix."""
    a0, a1, b0, b1, x, y = first
    c0, c1, d0, d1, u, v = second
    return (a0 * c0 + a1 * d0, a0 * c1 + a1 * d1, b0 * c0 + b1 * d0, b0 * c1 + b1 * d1,
            a0 * u + a1 * v + x, b0 * u + b1 * v + y)


def resized_crop_geometry(top, left, crop_height, crop_width, height: int, width: int):
    """The geometry resizing the box (top, left, crop_height, crop_width) in pixels, per image, to
    the whole image. The output's corner pixels sample the box's corner pixels (align-corners), so
    a box inside the image never samples outside it and the whole image as the box is the identity."""
    from keras import ops

    scale_x, scale_y = (crop_width - 1.0) / (width - 1.0), (crop_height - 1.0) / (height - 1.0)
    zeros = ops.zeros_like(scale_x)
    # input x = left + scale_x * x, written about the centre cx as centre + scale_x (x - cx) + shift
    shift_x = left - (1.0 - scale_x) * (width - 1) / 2.0
    shift_y = top - (1.0 - scale_y) * (height - 1) / 2.0
    return scale_x, zeros, zeros, scale_y, shift_x, shift_y


def resized_crop(images, top, left, crop_height, crop_width):
    """Per image: the box (top, left, crop_height, crop_width) in pixels, resized (bilinear) to the
    whole image; one affine transform for the batch: jittable, no per-image shapes."""
    return warp(images, resized_crop_geometry(top, left, crop_height, crop_width, images.shape[1], images.shape[2]))


def grayscale(images):
    """(batch, H, W, 1) luma of RGB images; 1-channel images as they are."""
    from keras import ops

    if images.shape[-1] != 3:
        return images
    return ops.sum(images * ops.convert_to_tensor(LUMA, images.dtype), axis=-1, keepdims=True)


def _per_image(values):
    from keras import ops

    return ops.reshape(values, (-1, 1, 1, 1))


def adjust_colour(images, brightness, contrast, saturation, hue=None):
    """Per-image colour changes as torchvision's ColorJitter makes them (in this fixed order),
    clipped to 0..255: brightness scales the pixels, contrast blends with the image's mean luma,
    saturation with its grayscale (factor 1: unchanged, 0: gray), hue rotates the colours about the
    gray axis by `hue` turns (in YIQ space: one 3x3 matrix per image, cheap). Saturation and hue
    leave 1-channel images alone."""
    from keras import ops

    images = images * _per_image(brightness)
    mean = ops.mean(grayscale(images), axis=(1, 2, 3), keepdims=True)
    images = mean + (images - mean) * _per_image(contrast)
    if images.shape[-1] == 3:
        gray = grayscale(images)
        images = gray + (images - gray) * _per_image(saturation)
        if hue is not None:
            images = rotate_hue(images, hue)
    return ops.clip(images, 0.0, 255.0)


def rotate_hue(images, turns):
    """Rotate each RGB image's colours by `turns` (per image) of a full turn about the gray axis."""
    from keras import ops

    to_yiq = RGB_TO_YIQ
    to_rgb = np.linalg.inv(to_yiq)
    # M = to_rgb @ R(angle) @ to_yiq with R rotating (I, Q): M = fixed + cos * turning + sin * across.
    fixed = np.outer(to_rgb[:, 0], to_yiq[0])
    turning = np.outer(to_rgb[:, 1], to_yiq[1]) + np.outer(to_rgb[:, 2], to_yiq[2])
    across = np.outer(to_rgb[:, 2], to_yiq[1]) - np.outer(to_rgb[:, 1], to_yiq[2])
    angle = ops.reshape(turns * (2 * math.pi), (-1, 1, 1))
    matrices = (ops.convert_to_tensor(fixed, images.dtype) + ops.cos(angle) * ops.convert_to_tensor(turning, images.dtype)
                + ops.sin(angle) * ops.convert_to_tensor(across, images.dtype))  # (batch, 3 out, 3 in)
    return ops.einsum("bhwc,bdc->bhwd", images, matrices)


def posterize(images, bits):
    """Keep the top `bits` (per image, 1..8) bits of every channel value."""
    from keras import ops

    step = _per_image(ops.power(2.0, 8.0 - bits))
    return ops.floor(images / step) * step


def solarize(images, threshold):
    """Invert (255 - v) every channel value at or above the per-image threshold."""
    from keras import ops

    return ops.where(images >= _per_image(threshold), 255.0 - images, images)


def autocontrast(images):
    """Stretch each channel of each image to 0..255 (PIL's autocontrast; a flat channel stays)."""
    from keras import ops

    low = ops.min(images, axis=(1, 2), keepdims=True)
    high = ops.max(images, axis=(1, 2), keepdims=True)
    spread = high - low
    stretched = (images - low) * (255.0 / ops.maximum(spread, 1e-3))
    return ops.where(spread > 0, stretched, images)


def _trivial_amount(op, magnitude, sign, name: str, high: float):
    """The signed amount of op `name` where it is each image's op, else 0."""
    from keras import ops

    return ops.where(ops.equal(ops.cast(op, "int32"), TRIVIAL_OPS.index(name)), sign * magnitude * high, 0.0)


def trivial_colour(images, op, magnitude, sign):
    """TrivialAugment's colour ops, each image getting exactly its own (see trivial_augment): the
    factors are 1 and the others are selected away where an image drew another op."""
    from keras import ops

    def chosen(name):
        return _per_image(ops.equal(ops.cast(op, "int32"), TRIVIAL_OPS.index(name)))

    factors = [1.0 + _trivial_amount(op, magnitude, sign, name, TRIVIAL_MAX[name])
               for name in ("brightness", "contrast", "saturation")]
    images = adjust_colour(images, *factors)
    images = ops.where(chosen("posterize"), posterize(images, 8.0 - ops.round(magnitude * TRIVIAL_MAX["posterize"])),
                       images)
    images = ops.where(chosen("solarize"), solarize(images, TRIVIAL_MAX["solarize"] * (1.0 - magnitude)), images)
    return ops.where(chosen("autocontrast"), autocontrast(images), images)


def trivial_geometry(op, magnitude, sign, height: int, width: int):
    """TrivialAugment's geometric ops as one geometry: rotation, shear or translation where that is
    the image's op, the identity elsewhere (only the drawn op's amount is nonzero in any image)."""
    from keras import ops

    def amount(name, high):
        return _trivial_amount(op, magnitude, sign, name, high)

    angle = amount("rotate", TRIVIAL_MAX["rotate"] * math.pi / 180.0)
    shear_x, shear_y = amount("shear_x", TRIVIAL_MAX["shear"]), amount("shear_y", TRIVIAL_MAX["shear"])
    cos, sin = ops.cos(angle), ops.sin(angle)
    return (cos, shear_x - sin, sin + shear_y, cos, amount("translate_x", TRIVIAL_MAX["translate"] * width),
            amount("translate_y", TRIVIAL_MAX["translate"] * height))


def trivial_augment(images, op, magnitude, sign, fill: str = "constant"):
    """TrivialAugment with the draws given per image: `op` an index into TRIVIAL_OPS (float or
    int), `magnitude` in [0, 1], `sign` +-1 for the ops with a direction. Every image gets exactly
    its op: the colour ops elementwise, the geometric ones as one affine transform for the whole
    batch (the identity for the other images)."""
    height, width = images.shape[1], images.shape[2]
    return warp(trivial_colour(images, op, magnitude, sign), trivial_geometry(op, magnitude, sign, height, width), fill)


def make_augment_layer(preset: str | dict, seed: int, steps_per_epoch: int = 1):
    """A Keras layer applying the preset (or an already parsed parameter dict, as parse_presets
    returns) to float images (0..255) when training=True.

    `steps_per_epoch` tells the alternating flip where epochs end: the layer counts its training
    calls in a variable (saved with checkpoints), so it needs no callback and stays jittable. The
    steps per epoch are a variable too, so folds of other sizes run the same compiled step.
    """
    import keras
    from keras import ops

    params = dict(preset) if isinstance(preset, dict) else parse_presets(preset)

    class Augment(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.params = params
            self.seed_generator = keras.random.SeedGenerator(seed)
            if params.get("flip") == "alternate":
                self.steps_seen = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                                  trainable=False, name="steps_seen")
                self.steps_per_epoch = self.add_weight(
                    shape=(), dtype="int32", trainable=False, name="steps_per_epoch",
                    initializer=keras.initializers.Constant(max(1, int(steps_per_epoch))))
            self.built = True  # its state is made above: nothing for fit to build by tracing a batch

        def _alternating_flip(self, images):
            """+-1 per image: a fixed per-image coin, inverted in every odd epoch.

            The coin is the parity of the image's pixel sum, a hash of its content: the same
            image gets the same coin every epoch without carrying row ids through the pipeline.
            Airbench flips a random half once and then everything in odd epochs; this is the same.
            """
            pixel_sum = ops.cast(ops.sum(images, axis=(1, 2, 3)), "int32")  # exact: < 2**24 for 32x32x3
            epoch = ops.floor_divide(self.steps_seen, self.steps_per_epoch)
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

        def _crop_and_flip(self, images, flip_source):
            p = self.params
            batch = ops.shape(images)[0]
            if p.get("flip") == "alternate":
                flip = self._alternating_flip(flip_source) < 0
            elif p.get("flip"):
                flip = self._uniform((batch,), 0, 1) < 0.5
            else:
                flip = ops.zeros((batch,), "bool")
            pad = p.get("crop_pad", 0)
            offsets = [ops.cast(ops.minimum(ops.floor(self._uniform((batch,), 0, 2 * pad + 1)), 2 * pad), "int32")
                       for _ in range(2)] if pad else [ops.zeros((batch,), "int32")] * 2
            return crop_and_flip(images, *offsets, flip, pad, CROP_FILL_MODES[p.get("fill", "constant")])

        def _affine(self, images, flip_source):
            """Flip, shift, rotate, zoom and crop in one projective transform per image."""
            p = self.params
            batch = ops.shape(images)[0]
            height, width = images.shape[1], images.shape[2]
            ones = ops.ones((batch,))
            if p.get("flip") == "alternate":
                flip = self._alternating_flip(flip_source)
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
            cos, sin = ops.cos(angle) * zoom, ops.sin(angle) * zoom
            return warp(images, (cos * flip, -sin, sin * flip, cos, shift_x, shift_y), p.get("fill", "constant"))

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

        def _resized_crop_geometry(self, images):
            """torchvision's RandomResizedCrop per image: an area fraction and a log-uniform aspect
            drawn, the box clipped to the image (where torchvision redraws up to 10 times, then
            falls back to a centre crop) and placed uniformly where it fits."""
            batch = ops.shape(images)[0]
            height, width = images.shape[1], images.shape[2]
            low, high = self.params["rrc_scale"]
            ratio_low, ratio_high = self.params["rrc_ratio"]
            area = self._uniform((batch,), low, high)
            aspect = ops.exp(self._uniform((batch,), math.log(ratio_low), math.log(ratio_high)))
            crop_width = ops.clip(ops.sqrt(area * aspect) * width, 1.0, width)
            crop_height = ops.clip(ops.sqrt(area / aspect) * height, 1.0, height)
            top = self._uniform((batch,), 0, 1) * (height - crop_height)
            left = self._uniform((batch,), 0, 1) * (width - crop_width)
            return resized_crop_geometry(top, left, crop_height, crop_width, height, width)

        def _photo(self, images):
            """Random-resized-crop and TrivialAugment in one bilinear warp: the colour op first (it
            is pointwise, so it commutes with moving pixels; contrast and autocontrast then take
            their statistics over the whole image, not the crop), then the crop and the geometric
            op composed. The flip comes after; both orders give the same distribution."""
            p = self.params
            geometries = [self._resized_crop_geometry(images)] if p.get("rrc_scale") else []
            if p.get("trivial"):
                batch = ops.shape(images)[0]
                op = ops.minimum(ops.floor(self._uniform((batch,), 0, len(TRIVIAL_OPS))), len(TRIVIAL_OPS) - 1)
                magnitude = self._uniform((batch,), 0, 1)
                sign = ops.where(self._uniform((batch,), 0, 1) < 0.5, -1.0, 1.0)
                images = trivial_colour(images, op, magnitude, sign)
                geometries.append(trivial_geometry(op, magnitude, sign, images.shape[1], images.shape[2]))
            geometry = geometries[0] if len(geometries) == 1 else compose(*geometries)
            return warp(images, geometry, p.get("fill", "constant"))

        def _jitter(self, images):
            batch = ops.shape(images)[0]
            brightness, contrast, saturation, hue = self.params["jitter"]
            factors = [self._uniform((batch,), 1.0 - amount, 1.0 + amount) for amount in (brightness, contrast, saturation)]
            turns = self._uniform((batch,), -hue, hue) if hue else None
            return adjust_colour(images, *factors, turns)

        def call(self, images, training=False):
            if not training or not self.params:
                return images
            p = self.params
            flip_source = images  # the alternating flip's coin hashes the image as given, before any warp
            if p.get("rrc_scale") or p.get("trivial"):
                images = self._photo(images)
            if self._whole_pixels(images) and (p.get("flip") or p.get("crop_pad")):
                images = self._crop_and_flip(images, flip_source)
            elif any(p.get(k) for k in ("flip", "rotation", "zoom", "shift", "crop_pad")):
                images = self._affine(images, flip_source)
            if p.get("reflect_crop"):
                images = self._reflect_crop(images)
            if p.get("flip") == "alternate":
                self.steps_seen.assign(self.steps_seen + 1)
            if p.get("brightness"):
                low, high = p["brightness"]
                images = images * self._uniform((ops.shape(images)[0], 1, 1, 1), low, high)
            if p.get("jitter"):
                images = self._jitter(images)
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
