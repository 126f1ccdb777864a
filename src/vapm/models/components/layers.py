"""Pieces the Keras image models share: the raw grey input and its training-time augmentation.

Every vision model takes raw grey images, uint8 `(S, S)` as featurize writes them, and does its own
scaling, so a saved model classifies a new image after nothing more than the resize.
"""
from __future__ import annotations

from pydantic import Field

from vapm.config.settings import Section

# Augmentation runs on raw pixel values, before each model's own scaling.
PIXEL_RANGE = (0.0, 255.0)


class Augmentation(Section):
    """Random flips/shifts/rotations/brightness in training (identity at inference); off by default."""
    enabled: bool = False
    flip: bool = True
    shift: float = Field(0.05, ge=0, lt=0.5)        # fraction of the image side
    rotation: float = Field(0.03, ge=0, le=0.5)     # fraction of a full turn
    brightness: float = Field(0.1, ge=0, lt=1)


def build_augmentation(settings: Augmentation, seed: int):
    """A keras.Sequential of random layers on (S, S, 1) raw-pixel images; None when disabled."""
    import keras
    from keras import layers

    if not settings.enabled:
        return None
    steps = []
    if settings.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if settings.shift > 0:
        steps.append(layers.RandomTranslation(settings.shift, settings.shift, fill_mode="reflect", seed=seed + 1))
    if settings.rotation > 0:
        steps.append(layers.RandomRotation(settings.rotation, fill_mode="reflect", seed=seed + 2))
    if settings.brightness > 0:
        steps.append(layers.RandomBrightness(settings.brightness, value_range=PIXEL_RANGE, seed=seed + 3))
        steps.append(layers.RandomContrast(settings.brightness, value_range=PIXEL_RANGE, seed=seed + 4))
    return keras.Sequential(steps, name="augmentation") if steps else None


def grey_input(image_size: int, augmentation: Augmentation, seed: int):
    """Raw (S, S) input -> (S, S, 1) tensor, augmented in training when augmentation is enabled."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size), name="grey_image")
    x = layers.Reshape((image_size, image_size, 1), name="add_channel")(inputs)
    augment = build_augmentation(augmentation, seed)
    if augment is not None:
        x = augment(x)
    return inputs, x


def square_side(images) -> int:
    from vapm.models.components.data import TrainingError

    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise TrainingError(f"vision images must be (N, S, S), got {images.shape}")
    return int(images.shape[1])
