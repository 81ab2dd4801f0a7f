"""Calibration data: .npz, folders of .npy/.npz and images, streaming, bad input; CPU flag parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.core.cpu import detect_cpu, parse_cpuinfo
from onnxopt.core.errors import InvalidInputError
from onnxopt.quantization.calibration import ImageSpec, compute_ranges, from_feed, open_calibration
from tests.conftest import make_convnet


def _count(src) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    n_batches = n = 0
    for b in src.batches():
        n_batches += 1
        n += int(b["input"].shape[0])
    return n_batches, n


def test_npz_streams_in_batches_up_to_samples(digits_cnn: Path, digits_calib: Path) -> None:
    model = onnx.load(str(digits_cnn))
    src = open_calibration(model, digits_calib, samples=50, batch_size=16)
    assert _count(src) == (4, 50)  # 16+16+16+2
    # a fresh iterator each time: the data can be read twice (calibration, then fidelity)
    assert _count(src) == (4, 50)
    head = src.head(20)
    assert head["input"].shape == (20, 1, 8, 8) and head["input"].dtype == np.float32


def test_folder_of_single_sample_npy_files(tmp_path: Path, digits_cnn: Path, digits_calib: Path) -> None:
    model = onnx.load(str(digits_cnn))
    x = np.load(digits_calib)["input"][:10]
    for i, s in enumerate(x):
        np.save(tmp_path / f"s{i:02d}.npy", s)  # no batch axis: one sample per file
    src = open_calibration(model, tmp_path, samples=100, batch_size=4)
    assert _count(src) == (3, 10)
    np.testing.assert_array_equal(src.head(10)["input"], x)


def test_image_folder_preprocessing(tmp_path: Path) -> None:
    from PIL import Image

    model = make_convnet()  # input [batch, 3, 16, 16]
    rng = np.random.default_rng(0)
    pixels = []
    for i in range(5):
        px = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(px).save(tmp_path / f"img{i}.png")
        pixels.append(px)
    spec = ImageSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    src = open_calibration(model, tmp_path, samples=5, batch_size=2, image=spec)
    x = src.head(5)["input"]
    assert x.shape == (5, 3, 16, 16) and x.dtype == np.float32
    # values follow (pixel/255 - mean) / std after a resize to 16x16
    ref = np.asarray(Image.fromarray(pixels[0]).resize((16, 16), Image.Resampling.BILINEAR), np.float32)
    np.testing.assert_allclose(x[0], ((ref / 255 - 0.5) / 0.25).transpose(2, 0, 1), atol=1e-5)


def test_empty_folder_is_rejected(tmp_path: Path, digits_cnn: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InvalidInputError, match="empty calibration folder"):
        open_calibration(onnx.load(str(digits_cnn)), tmp_path)


def test_mismatched_data_names_the_input(tmp_path: Path, digits_cnn: Path) -> None:
    p = tmp_path / "bad.npz"
    np.savez(p, input=np.zeros((4, 1, 9, 9), np.float32))
    with pytest.raises(InvalidInputError, match="input 'input'.*shape"):
        open_calibration(onnx.load(str(digits_cnn)), p)


def test_bad_image_spec() -> None:
    with pytest.raises(InvalidInputError, match="NCHW or NHWC"):
        ImageSpec(layout="CHW")
    with pytest.raises(InvalidInputError, match="std"):
        ImageSpec(std=(0.0,))


def test_ranges_streamed_in_chunks_equal_one_pass(tmp_path: Path, digits_cnn: Path, digits_calib: Path) -> None:
    model = onnx.load(str(digits_cnn))
    src = open_calibration(model, digits_calib, samples=64, batch_size=8)
    results = []
    for chunk in (1, 100):
        wd = tmp_path / f"c{chunk}"
        wd.mkdir()
        cache = compute_ranges(digits_cnn, src, method="minmax", op_types=["Conv", "Gemm"], workdir=wd,
                               chunk_batches=chunk)
        results.append(json.loads(cache.read_text()))
    assert results[0] == results[1]
    assert len(results[0]["data"]) > 3


def test_from_feed_checks_the_model(digits_cnn: Path) -> None:
    with pytest.raises(InvalidInputError, match="missing"):
        from_feed(onnx.load(str(digits_cnn)), {"x": np.zeros((2, 1, 8, 8), np.float32)})


def test_cpuinfo_parsing() -> None:
    x86 = "processor: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    f = parse_cpuinfo(x86, "x86_64")
    assert f.avx2 and not f.vnni and "no VNNI" in f.summary
    vnni = parse_cpuinfo("flags : avx2 avx512f avx512_vnni amx_tile amx_int8\n", "x86_64")
    assert vnni.vnni and vnni.amx and vnni.avx512f
    arm = parse_cpuinfo("Features\t: fp asimd asimddp i8mm\n", "aarch64")
    assert arm.is_arm and arm.arm_dotprod and arm.vnni
    here = detect_cpu()
    assert here.to_dict()["summary"]
