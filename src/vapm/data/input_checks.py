"""Cheap checks before the model: inputs that no classifier should be asked about, each with a named reason.

A silent or dead channel, a clipping or DC-shifted microphone, a blank, saturated, out-of-focus or tilted camera
image: each is told by one statistic of the decoded clip or grey image, in microseconds. The limits are wide of
what the real data shows (docs/unfamiliar-findings.md, "cheap checks": 320 compressor clips, 1,799 NEU images)
and flag none of its validation or test items:

| statistic | real data | limit |
|---|---|---|
| clip RMS | 0.029-0.170 | below 0.003: silence |
| share of samples at full scale (abs >= 0.999) | at most 0.014 % | above 0.1 %: clipping |
| clip mean | abs at most 8e-5 | abs above 0.01: DC offset |
| image standard deviation (grey levels) | 5.8-73.8 | below 2: blank or saturated |
| share of pure black pixels | at most 7.5 % | above 10 %: a black border (rotated or shifted camera) |
| mean absolute Laplacian (sharpness) | at least 2.78 | below 1.5: blurred or flat |

Two more image checks are learnt from the training images rather than set (vapm.data.image_polarity): a polarity
rule that tells them from their negatives (an inverted image) and a distance of the same statistics to theirs
(an image of another kind), each with the out-of-fold threshold that `ood.false_flag_rate` of them exceed.

Another dataset may sit elsewhere (the demo's synthetic clips carry a DC offset of about 0.05): `fit_clip_limits`
and `fit_image_limits` widen each limit to leave the training items' own range well inside, never narrowing the
shipped ones.

Featurize fits the limits on the training split and writes them into the preprocessing record (`checks`), so a
saved model carries the limits of the data it learnt from; predict, the served model and the monitor apply them
to every decoded input before the model and report the reasons in the answer's `unfamiliar_reasons`.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from vapm.data.image_polarity import (
    MIN_SIDE,
    LikenessRule,
    PolarityRule,
    fit_likeness,
    fit_polarity,
    polarity_features,
)


class ClipLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rms_floor: float = 0.003
    full_scale: float = 0.999
    clipping_share: float = 0.001
    dc_offset: float = 0.01
    # Half the smallest onset asymmetry of the training clips, when every one of them has sharp onsets and slow
    # decays (a compressor's valves and pistons do); None: the training clips do not, and the check is off.
    min_onset_asymmetry: float | None = None


class ImageLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_std: float = 2.0
    black_share: float = 0.10
    min_sharpness: float = 1.5
    # Learnt from the training images by featurize (vapm.data.image_polarity); None: they have no polarity a
    # rule can tell, they are too few or too small, or the limits predate the rule.
    polarity: PolarityRule | None = None
    # Learnt by featurize too: None where the training images are too few or too small.
    likeness: LikenessRule | None = None


ONSET_FRAME, ONSET_HOP = 256, 64  # samples: 15 ms frames every 4 ms at 50000/3 Hz


def onset_asymmetry(clip: np.ndarray) -> float | None:
    """The skewness of the frame-to-frame changes of a clip's log energy: positive when the energy rises sharply
    and falls slowly (impacts, valve clicks), negative for the same sound played backwards; None for a clip too
    short or too flat to say (silence).

    On the 320 real compressor clips it lies between 1.7 and 18.6 and each clip reversed between -19.2 and -2.1
    (docs/unfamiliar.md): a time-reversed or otherwise re-ordered recording cannot hide in the distance scores of
    features that ignore time order, but it shows here."""
    from numpy.lib.stride_tricks import sliding_window_view

    samples = np.asarray(clip, dtype=np.float64)
    if samples.ndim != 1 or len(samples) < ONSET_FRAME + 3 * ONSET_HOP:
        return None
    frames = sliding_window_view(samples - samples.mean(), ONSET_FRAME)[::ONSET_HOP]
    energy = np.mean(frames * frames, axis=1)
    if not np.any(energy > 0):
        return None
    changes = np.diff(np.log(energy + 1e-12 * energy.max()))
    spread = changes.std()
    if spread == 0 or not np.isfinite(spread):
        return None
    return float(np.mean(((changes - changes.mean()) / spread) ** 3))


def clip_reasons(clip: np.ndarray, limits: ClipLimits = ClipLimits()) -> list[str]:
    """Why a decoded clip (float samples, full scale 1) is not fit to be classified; empty when it is."""
    samples = np.asarray(clip, dtype=np.float64)
    if samples.ndim != 1 or len(samples) == 0:
        raise ValueError(f"a clip must be 1-D and not empty, got shape {samples.shape}")
    reasons = []
    rms = float(np.sqrt(np.mean(samples * samples)))
    if rms < limits.rms_floor:
        reasons.append(f"silence (RMS {rms:.2g} < {limits.rms_floor:g})")
    clipped = float(np.mean(np.abs(samples) >= limits.full_scale))
    if clipped > limits.clipping_share:
        reasons.append(f"clipping ({clipped:.2%} of samples at full scale > {limits.clipping_share:.1%})")
    offset = float(samples.mean())
    if abs(offset) > limits.dc_offset:
        reasons.append(f"DC offset ({offset:+.3g}, more than {limits.dc_offset:g} from 0)")
    if limits.min_onset_asymmetry is not None and rms >= limits.rms_floor:
        asymmetry = onset_asymmetry(samples)
        if asymmetry is not None and asymmetry < limits.min_onset_asymmetry:
            reasons.append(f"onsets unlike the training clips' (asymmetry {asymmetry:.2g} < "
                           f"{limits.min_onset_asymmetry:.2g}; a time-reversed clip gives a negative one)")
    return reasons


def sharpness(image: np.ndarray) -> float:
    """The mean absolute 4-neighbour Laplacian of a grey image (grey levels): low for a blurred or flat image."""
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim != 2 or min(grey.shape) < 3:
        raise ValueError(f"need a 2-D grey image of at least 3x3 pixels, got shape {grey.shape}")
    laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
    return float(np.mean(np.abs(laplacian)))


def image_reasons(image: np.ndarray, limits: ImageLimits = ImageLimits()) -> list[str]:
    """Why a grey uint8 image (as the model takes it) is not fit to be classified; empty when it is."""
    grey = np.asarray(image)
    if grey.ndim != 2:
        raise ValueError(f"need a 2-D grey image, got shape {grey.shape}")
    reasons = []
    spread = float(grey.std())
    if spread < limits.min_std:
        level = float(grey.mean())
        what = "saturated" if level > 250 else "black" if level < 5 else "blank"
        reasons.append(f"{what} image (grey levels vary by {spread:.2g} < {limits.min_std:g})")
    black = float(np.mean(grey == 0))
    if black > limits.black_share:
        reasons.append(f"black border ({black:.0%} of pixels pure black > {limits.black_share:.0%})")
    if not reasons:  # a blank image is also flat: one reason is enough
        sharp = sharpness(grey)
        if sharp < limits.min_sharpness:
            reasons.append(f"out of focus (sharpness {sharp:.2g} < {limits.min_sharpness:g})")
    if reasons or min(grey.shape) < MIN_SIDE:
        return reasons
    if limits.polarity is not None:
        score = limits.polarity.score(grey)
        if score > limits.polarity.threshold:
            reasons.append(f"grey levels inverted (polarity score {score:.3g} > {limits.polarity.threshold:.3g})")
    if limits.likeness is not None:
        distance = limits.likeness.distance(grey)
        if distance > limits.likeness.threshold:
            reasons.append(f"image statistics unlike the training images' (distance {distance:.3g} > "
                           f"{limits.likeness.threshold:.3g})")
    return reasons


def _checked_items(items: np.ndarray, ndim: int, what: str) -> np.ndarray:
    array = np.asarray(items, dtype=np.float64)
    if array.ndim != ndim or len(array) == 0:
        raise ValueError(f"need {what}, got shape {array.shape}")
    return array


def clip_statistics(clips: np.ndarray, full_scale: float = ClipLimits().full_scale) -> np.ndarray:
    """float64 (N, 4), per clip (N, samples): RMS, share of samples at full scale, absolute mean, onset asymmetry
    (NaN where there is none): what `clip_limits` fits the limits on. Each clip's alone, so they can be computed
    where the clip is (featurize's workers) and gathered."""
    part = np.asarray(clips, dtype=np.float64)
    if part.ndim != 2:
        raise ValueError(f"need clips (N, samples), got shape {part.shape}")
    asymmetry = [onset_asymmetry(clip) for clip in part]
    return np.column_stack([np.sqrt(np.mean(part * part, axis=1)), np.mean(np.abs(part) >= full_scale, axis=1),
                            np.abs(part.mean(axis=1)), np.array([np.nan if a is None else a for a in asymmetry])
                            ]).reshape(len(part), 4)


def clip_limits(statistics: np.ndarray, base: ClipLimits = ClipLimits()) -> ClipLimits:
    """The shipped limits, widened so that the training clips whose `clip_statistics` are given sit well inside
    them: the RMS floor at most a tenth of the quietest clip's, the clipping share and DC offset at least twice the
    largest seen, the onset asymmetry floor half the lowest when every clip has a positive one."""
    statistics = np.asarray(statistics, dtype=np.float64).reshape(-1, 4)
    if not len(statistics):
        raise ValueError("need the statistics of at least one training clip")
    rms, clipped, offset, asymmetry = statistics.T
    known = asymmetry[~np.isnan(asymmetry)]
    lowest = float(known.min()) if len(known) else None
    return ClipLimits(rms_floor=min(base.rms_floor, 0.1 * float(rms.min())),
                      full_scale=base.full_scale,
                      clipping_share=max(base.clipping_share, 2 * float(clipped.max())),
                      dc_offset=max(base.dc_offset, 2 * float(offset.max())),
                      min_onset_asymmetry=0.5 * lowest if lowest is not None and lowest > 0 and
                      len(known) == len(asymmetry) else None)


def fit_clip_limits(clips: np.ndarray, base: ClipLimits = ClipLimits(), rows: np.ndarray | None = None,
                    chunk: int = 256) -> ClipLimits:
    """`clip_limits` of the training clips (N, samples). Only `rows` count when given; `chunk` clips are read at a
    time, so clips on disk (vapm.core.npy_rows) are never read whole."""
    rows = np.arange(len(clips)) if rows is None else np.asarray(rows, dtype=np.int64)
    if np.ndim(clips) != 2 or len(rows) == 0:
        raise ValueError(f"need training clips (N, samples), got shape {np.shape(clips)} and {len(rows)} rows")
    return clip_limits(np.concatenate([clip_statistics(clips[rows[start:start + chunk]], base.full_scale)
                                       for start in range(0, len(rows), chunk)]), base)


def fit_image_limits(images: np.ndarray, base: ImageLimits = ImageLimits(), rows: np.ndarray | None = None,
                     chunk: int = 256, false_flag_rate: float = 0.01, statistics: np.ndarray | None = None
                     ) -> ImageLimits:
    """The shipped limits, widened so that the training images (N, H, W) sit well inside them: the spread and
    sharpness floors at most half the lowest seen, the black share at least 1.5 times the largest; and the
    polarity and likeness rules learnt from them, each flagging `false_flag_rate` of them out of fold
    (vapm.data.image_polarity): on `statistics`, the rows' `polarity_features` when computed elsewhere (featurize's
    workers), else computed here. Only
    `rows` count when given; `chunk` images are read at a time (`images` may be rows on disk, vapm.core.npy_rows).
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    if np.ndim(images) != 3 or len(rows) == 0:
        raise ValueError(f"need training images (N, height, width), got shape {np.shape(images)} and {len(rows)} "
                         "rows")
    learn_polarity = min(np.shape(images)[1:]) >= MIN_SIDE
    spread, black, sharp, polarity = [], [], [], []
    for start in range(0, len(rows), chunk):
        part = _checked_items(images[rows[start:start + chunk]], 3, "training images (N, height, width)")
        spread.append(part.reshape(len(part), -1).std(axis=1))
        black.append(np.mean(part.reshape(len(part), -1) == 0, axis=1))
        sharp += [sharpness(image) for image in part]
        polarity += [polarity_features(image) for image in part] if learn_polarity and statistics is None else []
    spread, black, sharp = np.concatenate(spread), np.concatenate(black), np.array(sharp)
    if learn_polarity and statistics is not None:
        polarity = np.asarray(statistics, dtype=np.float64)
        if len(polarity) != len(rows):
            raise ValueError(f"need the statistics of the {len(rows)} rows, got {len(polarity)}")
    return ImageLimits(min_std=min(base.min_std, 0.5 * float(spread.min())),
                       black_share=max(base.black_share, 1.5 * float(black.max())),
                       min_sharpness=min(base.min_sharpness, 0.5 * float(sharp.min())),
                       polarity=fit_polarity(np.array(polarity), false_flag_rate) if learn_polarity else None,
                       likeness=fit_likeness(np.array(polarity), false_flag_rate) if learn_polarity else None)
