"""ImageNet-style crops: a random-resized (Inception) crop for training and a centred crop for evaluation.

The crop box is sampled here, once, by pure functions of the image's size and of uniforms drawn from
(seed, epoch, example): the PIL path (image folders, no TensorFlow) and the tf.data path (tfds TFRecords) both
call them, then decode only what the box needs: PIL's `draft` decodes a JPEG at 1/2, 1/4 or 1/8 scale (in the DCT
domain) when the crop stays at least the output size, and tf.image's `decode_and_crop_jpeg` decodes the box alone.
"""

import dataclasses
import math

import numpy as np
from PIL import Image

INCEPTION_CROP = "inception_crop"  # its name in data.augment: the random-resized crop of streamed training images
CROP_AREA = (0.08, 1.0)      # random-resized crop: fraction of the image's area (Szegedy et al. 2015; torchvision)
CROP_ASPECT = (3 / 4, 4 / 3)  # and width / height, drawn log-uniformly
ATTEMPTS = 10                 # boxes tried before falling back to a centred crop of the clamped aspect
UNIFORMS = (ATTEMPTS, 4)      # per attempt: area, log aspect, top, left
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255  # normalize='imagenet' (torchvision's constants)
STD_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255


def example_uniforms(*ids: int) -> np.ndarray:
    """The uniforms in [0, 1) of one example's crop, a function of ids = (seed, epoch, example ...) only."""
    return np.random.default_rng([int(i) for i in ids]).random(UNIFORMS)


def random_resized_crop_box(height: int, width: int, uniforms: np.ndarray, area=CROP_AREA,
                            aspect=CROP_ASPECT) -> np.ndarray:
    """(top, left, h, w) of an Inception-style crop of a height x width image (torchvision's RandomResizedCrop).

    Attempt k takes an area fraction and a log-uniform aspect from uniforms[k]; the first box that fits is placed
    uniformly. If none of the ATTEMPTS fits, the crop is the whole image clamped to the aspect range, centred.
    """
    log_aspect = np.log(aspect)
    for u_area, u_aspect, u_top, u_left in uniforms:
        target = height * width * (area[0] + (area[1] - area[0]) * u_area)
        ratio = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u_aspect)
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return np.array([int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w], np.int32)
    h, w = height, width
    if width / height < aspect[0]:
        h = round(width / aspect[0])
    elif width / height > aspect[1]:
        w = round(height * aspect[1])
    return np.array([(height - h) // 2, (width - w) // 2, h, w], np.int32)


def center_crop_box(height: int, width: int, crop: float) -> np.ndarray:
    """(top, left, side, side): the centred square of `crop` x the shorter side.

    Resized to S x S it is "resize the shorter side to S / crop, centre-crop S x S": crop=0.875 is ImageNet's
    256 -> 224 evaluation; crop=1 keeps the whole shorter side.
    """
    side = max(1, int(crop * min(height, width)))
    return np.array([(height - side + 1) // 2, (width - side + 1) // 2, side, side], np.int32)


@dataclasses.dataclass(frozen=True)
class Crops:
    """How a stored image becomes a size x size input: random-resized in training when `random`, else centred."""

    size: int
    eval_crop: float
    random: bool
    seed: int

    def train_box(self, height: int, width: int, epoch: int, *example: int) -> np.ndarray:
        if not self.random:
            return self.eval_box(height, width)
        return random_resized_crop_box(height, width, example_uniforms(self.seed, epoch, *example))

    def eval_box(self, height: int, width: int) -> np.ndarray:
        return center_crop_box(height, width, self.eval_crop)


def load_crop(path, box_fn, size: int) -> np.ndarray:
    """The size x size x 3 uint8 crop box_fn(height, width) of an image file, decoding as little as PIL allows.

    Raises the errors PIL raises for a file that is not an image (the caller names the file).
    """
    with Image.open(path) as image:
        width, height = image.size
        top, left, h, w = (int(v) for v in box_fn(height, width))
        # JPEG: decode at the smallest 1/2^k scale that leaves the crop at least size x size (a no-op for PNG).
        drafted = image.draft("RGB", (-(-width * size // w), -(-height * size // h)))
        sx, sy = (drafted[1][2] / width, drafted[1][3] / height) if drafted else (1.0, 1.0)
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box))


def tf_crop(encoded, image_feature, box_fn, example, size: int):
    """tf.data's twin of load_crop: box_fn(height, width, example)'s crop of an encoded tfds image, resized.

    JPEGs are decoded with decode_and_crop_jpeg (only the box); other formats are decoded whole, then cropped.
    """
    import tensorflow as tf

    jpeg = image_feature.encoding_format == "jpeg"
    channels = image_feature.shape[-1]
    image = None if jpeg else image_feature.decode_example(encoded)
    shape = tf.image.extract_jpeg_shape(encoded) if jpeg else tf.shape(image)
    box = tf.numpy_function(lambda h, w, i: box_fn(int(h), int(w), int(i)), [shape[0], shape[1], example], tf.int32,
                            stateful=False)
    box = tf.ensure_shape(box, [4])
    if jpeg:
        image = tf.image.decode_and_crop_jpeg(encoded, box, channels=channels)
    else:
        image = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
