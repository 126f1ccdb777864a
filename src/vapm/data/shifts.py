"""Shifted inputs built from the test split itself, to measure how many of them a classifier's "unfamiliar input"
flag catches (issue 26). Each shift stands for something that reaches a deployed model without being one of its
classes:

Images (grey, uint8):
- blank: a lens cap, a missing part or an empty conveyor; the image keeps its brightness and loses every edge.
- saturated: an overexposed frame or a light pointed into the camera; nothing left to see.
- inverted: a negative, a wrong colour map or a surface lit from behind; same textures, opposite polarity.
- blurred: the camera out of focus or the part moving (Gaussian, sigma 3 pixels); the texture is gone, the layout
  stays.
- rotated: a camera mounted at an angle (45 degrees, black corners as a fixed-size sensor would see).
- other_modality: the wrong kind of data sent to the endpoint, here the acoustic feature images drawn as pictures.

Clips (float, full scale 1):
- gain_x0.01: a microphone far away or a gain set 40 dB too low; the sound is right, its level is not.
- gain_x100: a gain set 40 dB too high; the clip is clipped at full scale, as a recorder would.
- white_noise_0dB: a noisy plant or a bad cable, noise as loud as the machine (0 dB signal-to-noise ratio).
- tone_2kHz: a test tone, a whistle or an alarm instead of the machine, at the clip's own loudness.
- silence: a dead microphone or a muted channel.
- time_reversed: a clip played backwards; the same spectrum, the wrong time structure (onsets become decays).

Pure functions on arrays; the pipeline feeds their output through the same features and scorers as the test split.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

IMAGE_SHIFTS = ("blank", "saturated", "inverted", "blurred", "rotated", "other_modality")
CLIP_SHIFTS = ("gain_x0.01", "gain_x100", "white_noise_0dB", "tone_2kHz", "silence", "time_reversed")

BLUR_SIGMA = 3.0
ROTATION_DEGREES = 45.0
TONE_HZ = 2000.0


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 grey levels, got dtype {images.dtype}")
    if images.ndim != 3:
        raise ValueError(f"images must be a stack (N, H, W) of grey images, got shape {images.shape}")
    if 0 in images.shape:
        raise ValueError(f"images must hold at least one image of at least one pixel, got shape {images.shape}")
    return images


def _finite_stack(array: np.ndarray, ndim: int, what: str, shape: str, items: str) -> np.ndarray:
    """`array` as float64 once it is `ndim`-D, not empty and finite; a ValueError naming `what` otherwise."""
    if array.ndim != ndim:
        raise ValueError(f"{what} must be {shape}, got shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{what} must hold {items}, got shape {array.shape}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return values


def _check_other_images(other_images: np.ndarray) -> np.ndarray:
    other = np.asarray(other_images)
    if other.dtype == np.bool_ or not (np.issubdtype(other.dtype, np.integer)
                                       or np.issubdtype(other.dtype, np.floating)):
        raise ValueError(f"other_images must be real numbers, got dtype {other.dtype}")
    return _finite_stack(other, 3, "other_images", "a stack (N, h, w)", "at least one image of at least one pixel")


def _as_picture(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """One feature image drawn as a grey picture: min-max scaled to 0..255, low rows at the bottom, resized."""
    low, high = image.min(), image.max()
    scaled = (image - low) * (255.0 / (high - low)) if high > low else np.zeros_like(image)  # constant: black
    flipped = scaled[::-1, :]
    if flipped.shape != (height, width):
        # Bilinear, corners aligned: the first and last rows and columns map onto the output's edges exactly.
        flipped = ndimage.zoom(flipped, (height / flipped.shape[0], width / flipped.shape[1]), order=1,
                               mode="nearest")
    if flipped.shape != (height, width):  # zoom rounds the output size; never seen, but fail loudly if it does
        raise ValueError(f"resizing {image.shape} to {(height, width)} gave {flipped.shape}")
    return _to_uint8(flipped)


def image_shifts(images: np.ndarray, other_images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The shifts of IMAGE_SHIFTS for a stack of grey images (N, H, W) uint8, each uint8 (N, H, W).

    `other_images` (N2, h, w), any real numbers (e.g. acoustic feature images), become the "other_modality" shift:
    each drawn as a picture of size (H, W), repeated or cut to N items; without them that key is absent."""
    images = _check_images(images)
    count, height, width = images.shape
    values = images.astype(np.float64)
    shifts = {
        "blank": np.broadcast_to(_to_uint8(values.mean(axis=(1, 2)))[:, None, None], images.shape).copy(),
        "saturated": np.full(images.shape, 255, dtype=np.uint8),
        "inverted": (255 - images).astype(np.uint8),
        # sigma 0 along the stack axis: each image is blurred on its own.
        "blurred": _to_uint8(ndimage.gaussian_filter(values, sigma=(0.0, BLUR_SIGMA, BLUR_SIGMA))),
        # axes (2, 1) are (x, y) of each image, as rotate's default (1, 0) is for one image: counter-clockwise.
        "rotated": _to_uint8(ndimage.rotate(values, ROTATION_DEGREES, axes=(2, 1), reshape=False, order=1,
                                            mode="constant", cval=0.0)),
    }
    if other_images is not None:
        other = _check_other_images(other_images)
        used = min(count, len(other))
        pictures = np.stack([_as_picture(other[i], height, width) for i in range(used)])
        shifts["other_modality"] = pictures[np.arange(count) % used]
    return shifts


def clip_shifts(clips: np.ndarray, sample_rate: float, seed: int) -> dict[str, np.ndarray]:
    """The shifts of CLIP_SHIFTS for clips (N, S) at full scale 1, each float32 (N, S).

    The noise is drawn from np.random.default_rng(seed), so the same clips and seed give the same shifts. A silent
    clip has RMS 0, so its noisy and tone versions are silent too."""
    clips = np.asarray(clips)
    if not np.issubdtype(clips.dtype, np.floating):
        raise ValueError(f"clips must be floating-point samples at full scale 1, got dtype {clips.dtype}")
    values = _finite_stack(clips, 2, "clips", "an array (N, samples)", "at least one clip of at least one sample")
    sample_rate = float(sample_rate)
    if not np.isfinite(sample_rate) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of samples per second, got {sample_rate}")
    if TONE_HZ >= sample_rate / 2:
        raise ValueError(f"a {TONE_HZ:g} Hz tone needs a sample rate above {2 * TONE_HZ:g} Hz (Nyquist), "
                         f"got {sample_rate:g}")
    count, samples = values.shape
    rms = np.sqrt(np.mean(values ** 2, axis=1, keepdims=True))
    noise = np.random.default_rng(seed).standard_normal((count, samples)) * rms  # std = RMS: 0 dB SNR
    time = np.arange(samples) / sample_rate
    tone = np.sqrt(2.0) * rms * np.sin(2.0 * np.pi * TONE_HZ * time)[None, :]  # a sine's RMS is amplitude / sqrt 2
    shifted = {
        "gain_x0.01": values * 0.01,
        "gain_x100": np.clip(values * 100.0, -1.0, 1.0),
        "white_noise_0dB": values + noise,
        "tone_2kHz": tone,
        "silence": np.zeros_like(values),
        "time_reversed": values[:, ::-1],
    }
    return {name: np.ascontiguousarray(shifted[name], dtype=np.float32) for name in CLIP_SHIFTS}
