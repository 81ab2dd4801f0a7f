"""Calibration inputs: .npz files, folders of .npy/.npz files or images, streamed in batches."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.checks import check_data, check_sample_counts
from onnxopt.core.errors import InvalidInputError, MissingExtraError
from onnxopt.core.feeds import (
    Axes,
    Feed,
    add_batch_axis,
    batches,
    check_feed,
    concat_feeds,
    feed_samples,
    first_batch,
    load_npz,
    select_inputs,
)
from onnxopt.core.model import TensorSpec, batch_axes, fixed_batch, graph_inputs, run_batch
from onnxopt.core.runtime import run_error

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ARRAY_SUFFIXES = (".npy", ".npz")
DEFAULT_BATCH = 16


@dataclass(frozen=True)
class ImageSpec:
    """How to turn an image file into a model input: resize, scale, normalize, lay out."""

    size: tuple[int, int] | None = None  # (height, width); None: from the model's input shape
    layout: str = "NCHW"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    grayscale: bool | None = None  # None: from the model's channel count

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise InvalidInputError(f"image layout {self.layout!r}: choose NCHW or NHWC")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise InvalidInputError(f"image size {self.size}: give two positive integers, e.g. --image-size 224,224")
        if any(s == 0 for s in self.std):
            raise InvalidInputError("image std must not contain 0 (it divides the pixels)")
        if self.scale <= 0:
            raise InvalidInputError(f"image scale {self.scale}: must be > 0, e.g. 0.00392 (1/255)")


class CalibrationSource:
    """Model inputs streamed in batches from an in-memory feed, an .npz, or a folder of files."""

    def __init__(
        self,
        model: ModelProto,
        batch_factory: Callable[[int], Iterator[Feed]],
        *,
        description: str,
        samples: int,
        batch_size: int,
    ) -> None:
        self._model = model
        self._factory = batch_factory
        self.description = description
        self.samples = samples
        self.batch_size = batch_size

    @property
    def model(self) -> ModelProto:
        """The model whose inputs the source feeds."""
        return self._model

    def batches(self) -> Iterator[Feed]:
        """A fresh iterator over at most `samples` samples in batches of at most `batch_size`."""
        remaining = self.samples
        axes = batch_axes(self._model)
        for b in self._factory(self.batch_size):
            if remaining <= 0:
                return
            n = feed_samples(b, axes)
            if n > remaining:
                b = first_batch(b, remaining, axes)
                n = remaining
            remaining -= n
            yield b

    def limited(self, samples: int) -> CalibrationSource:
        """The same source capped at `samples` samples."""
        return CalibrationSource(self._model, self._factory, description=self.description,
                                 samples=min(self.samples, samples), batch_size=self.batch_size)

    def head(self, n: int) -> Feed:
        """The first n samples concatenated into one feed (for fidelity checks)."""
        parts: list[Feed] = []
        got = 0
        axes = batch_axes(self._model)
        for b in self.batches():
            parts.append(b)
            got += feed_samples(b, axes)
            if got >= n:
                break
        if not parts:
            raise InvalidInputError(f"{self.description}: no calibration samples")
        return first_batch(concat_feeds(parts, axes), n, axes)


def check_samples(model: ModelProto, feed: Feed, source: str) -> None:
    """check_data (numbers, finite), then check_feed, which accepts any number of samples for models
    with a fixed batch size (run batch by batch)."""
    check_data(feed, source)
    check_sample_counts(model, feed, source)
    fixed = fixed_batch(model)
    axes = batch_axes(model)
    if fixed is not None and feed and feed_samples(feed, axes) >= fixed:
        check_feed(model, first_batch(feed, fixed, axes), source)
    else:
        check_feed(model, feed, source)


def fit_feed(model: ModelProto, data: dict[str, np.ndarray], source: str) -> Feed:
    """The model's inputs taken from an npz mapping (one-input models may use any single key), checked."""
    feed = select_inputs(model, data)
    check_samples(model, feed, source)
    return feed


def from_feed(model: ModelProto, feed: Feed, *, samples: int | None = None, batch_size: int | None = None,
              description: str = "calibration data") -> CalibrationSource:
    """A CalibrationSource over an in-memory feed (checked against the model's inputs)."""
    check_samples(model, feed, description)
    axes = batch_axes(model)
    n = feed_samples(feed, axes)
    if n == 0:
        raise InvalidInputError(f"{description}: contains 0 samples")
    bs = batch_size or run_batch(model) or DEFAULT_BATCH

    def factory(size: int) -> Iterator[Feed]:
        yield from batches(feed, size, axes)

    return CalibrationSource(model, factory, description=description, samples=min(samples or n, n), batch_size=bs)


def open_calibration(
    model: ModelProto,
    path: str | os.PathLike[str],
    *,
    samples: int = 200,
    batch_size: int | None = None,
    image: ImageSpec | None = None,
) -> CalibrationSource:
    """Open calibration data: an .npz/.npy file, a folder of .npy/.npz files, or a folder of images.

    Only the first batch is read now (to check it against the model); the rest streams.
    """
    if samples <= 0:
        raise InvalidInputError(f"--calib-samples {samples}: must be a positive number of samples")
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: calibration data not found (give an .npz file or a folder)")
    bs = batch_size or run_batch(model) or DEFAULT_BATCH
    if p.is_file():
        data = load_npz(p)
        feed = fit_feed(model, add_batch_axis(model, data), source=str(p))
        src = from_feed(model, feed, samples=samples, batch_size=bs, description=str(p))
        return src
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in ARRAY_SUFFIXES + IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(
            f"{p}: empty calibration folder (no .npy, .npz or image files); add representative inputs"
        )
    arrays = [f for f in files if f.suffix.lower() in ARRAY_SUFFIXES]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if arrays and images:
        raise InvalidInputError(f"{p}: mixes array files and images; keep one kind per calibration folder")
    if arrays:
        factory = _array_folder_factory(model, arrays)
        desc = f"{p} ({len(arrays)} array files)"
    else:
        spec = _image_input(model, p)
        img = image or ImageSpec()
        factory = _image_folder_factory(spec, images, img)
        desc = f"{p} ({len(images)} images)"
    src = CalibrationSource(model, factory, description=desc, samples=samples, batch_size=bs)
    first = next(src.batches(), None)
    if first is None:
        raise InvalidInputError(f"{p}: no calibration samples could be read")
    check_samples(model, first, str(p))
    return src


def _array_folder_factory(model: ModelProto, files: Sequence[Path]) -> Callable[[int], Iterator[Feed]]:
    def samples() -> Iterator[Feed]:
        for f in files:
            data = add_batch_axis(model, load_npz(f))
            if "" in data:  # a bare .npy: the single input
                specs = graph_inputs(model)
                if len(specs) != 1:
                    raise InvalidInputError(
                        f"{f}: a bare .npy file can only feed a single-input model; use .npz with keys "
                        + ", ".join(s.name for s in specs)
                    )
                data = {specs[0].name: data[""]}
            feed = fit_feed(model, data, source=str(f))
            yield from batches(feed, 1, axes)

    axes = batch_axes(model)
    return lambda size: _rebatch(samples(), size, axes)


def _rebatch(samples: Iterator[Feed], size: int, axes: Axes | None = None) -> Iterator[Feed]:
    while True:
        chunk = list(itertools.islice(samples, size))
        if not chunk:
            return
        yield concat_feeds(chunk, axes)


def _image_input(model: ModelProto, folder: Path) -> TensorSpec:
    specs = graph_inputs(model)
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise InvalidInputError(
            f"{folder}: image calibration folders need a model with one 4-D image input; "
            f"this model has inputs {', '.join(s.name + str(list(s.shape)) for s in specs)}"
        )
    return specs[0]


def _image_folder_factory(spec: TensorSpec, files: Sequence[Path], img: ImageSpec) -> Callable[[int], Iterator[Feed]]:
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingExtraError("pillow", "data") from e
    shape = spec.shape
    if img.layout == "NCHW":
        c, h, w = shape[1], shape[2], shape[3]
    else:
        h, w, c = shape[1], shape[2], shape[3]
    if img.size is not None:
        h, w = img.size
    if not (isinstance(h, int) and isinstance(w, int)):
        raise InvalidInputError(
            f"input {spec.name} has symbolic height/width {shape}: give --image-size H,W"
        )
    channels = c if isinstance(c, int) else (1 if img.grayscale else 3)
    gray = img.grayscale if img.grayscale is not None else channels == 1
    mean = np.asarray(img.mean, dtype=np.float32)
    std = np.asarray(img.std, dtype=np.float32)
    dtype = spec.numpy_dtype

    def load(f: Path) -> np.ndarray:
        try:
            with Image.open(f) as raw:
                im = raw.convert("L" if gray else "RGB").resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.float32)
        except Exception as e:
            raise InvalidInputError(f"{f}: not a readable image: {e}") from e
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = (arr * img.scale - mean) / std  # HWC, broadcast over channels
        if img.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return arr.astype(dtype)[None]

    def samples() -> Iterator[Feed]:
        for f in files:
            yield {spec.name: load(f)}

    return lambda size: _rebatch(samples(), size)


class FeedReader:
    """An onnxruntime CalibrationDataReader over a list of feeds (one get_next per batch)."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        """The next batch, or None when done."""
        return next(self._it, None)

    def __iter__(self) -> Iterator[Feed]:
        return iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def compute_ranges(
    model_path: str | os.PathLike[str],
    source: CalibrationSource,
    *,
    method: str,
    op_types: Sequence[str],
    workdir: str | os.PathLike[str],
    chunk_batches: int = 8,
) -> Path:
    """Calibrate once and write onnxruntime's tensor-range cache (JSON); return its path.

    Batches stream through the calibrator `chunk_batches` at a time, so memory holds at
    most that many batches of intermediate tensors (plus the histograms of entropy/percentile).
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    work = Path(workdir)
    calibrator = create_calibrator(
        Path(model_path),
        list(op_types),
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=methods[method],
        extra_options={},
    )
    it = source.batches()
    axes = batch_axes(source.model)
    seen = 0
    while True:
        chunk = list(itertools.islice(it, chunk_batches))
        if not chunk:
            break
        seen += sum(feed_samples(c, axes) for c in chunk)
        try:
            calibrator.collect_data(FeedReader(chunk))
        except Exception as e:  # onnxruntime runs the model here: the error names the node
            raise run_error(e, f"the model on the calibration data {source.description}") from e
    if seen == 0:
        raise InvalidInputError(f"{source.description}: no calibration samples")
    ranges = calibrator.compute_data()
    cache = work / f"calib_{method}.json"
    save_tensors_data(ranges, cache)
    log.info("calibrated %d tensors on %d samples (%s)", len(ranges.data), seen, method)
    del calibrator
    return cache


