"""Real-looking inputs for the corpus, one sample at a time, at the shape each model is deployed at.

Random normal noise is a poor probe for a real model: a text detector sees no text, a VAD no
speech, a file-type classifier no file. Each spec in the manifest names a kind; every kind here
draws something shaped like the real thing (a photo-like image, a page or a line of glyph-like
strokes, bytes of a source file, voiced audio, wordpiece ids) with a generator seeded by
(seed, sample index, input position), so runs are reproducible and samples differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Spec = Mapping[str, Any]


def synthesize(specs: Mapping[str, Spec], index: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed {input name: array} for sample `index`, following each input's spec."""
    feed = {}
    for position, (name, spec) in enumerate(specs.items()):
        rng = np.random.default_rng([seed, index, position])
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"input {name!r}: unknown kind {kind!r}; known: {sorted(KINDS)}")
        feed[name] = KINDS[kind](spec, rng, index)
    return feed


def _dtype(spec: Spec, default: str = "float32") -> np.dtype:
    return np.dtype(spec.get("dtype", default))


# ---------------------------------------------------------------- images


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: a coarse grid bilinearly upsampled to h x w."""
    grid = rng.random((cells + 1, cells + 1))
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _photo(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """Smooth colour gradients, a few solid shapes (objects with edges), sensor noise; 0-255."""
    img = np.stack([_smooth(rng, h, w, 4) * 180 + 40 for _ in range(c)])
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(h // 12 + 1, h // 3 + 2), rng.integers(w // 12 + 1, w // 3 + 2)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        shade = _smooth(rng, h, w, 2) * 60 - 30
        for ch in range(c):
            img[ch][mask] = rng.uniform(0, 255) + shade[mask]
    return img + rng.normal(0, 4, img.shape)


def _glyph_row(rng: np.random.Generator, img: np.ndarray, top: int, height: int, x0: int, x1: int) -> None:
    """Draw a line of glyph-like dark strokes (bars and dots) into img[..., top:top+height, x0:x1]."""
    x, ink = x0, rng.uniform(10, 70)
    stroke = max(1, height // 8)
    while x < x1 - height // 2:
        gw = int(rng.integers(max(2, height // 2), height + 1))
        box = img[:, top:top + height, x:min(x + gw, x1)]
        for _ in range(int(rng.integers(2, 5))):
            if rng.random() < 0.5:  # vertical stroke
                cx = int(rng.integers(0, max(1, box.shape[2] - stroke)))
                y0 = int(rng.integers(0, height // 2 + 1))
                box[:, y0:int(rng.integers(y0 + height // 3, height + 1)), cx:cx + stroke] = ink
            else:  # horizontal stroke
                cy = int(rng.integers(0, max(1, height - stroke)))
                box[:, cy:cy + stroke, : int(rng.integers(box.shape[2] // 2, box.shape[2] + 1))] = ink
        x += gw + int(rng.integers(1, max(2, height // 4)))
        if rng.random() < 0.15:
            x += height  # a word gap


def _document(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """A page: light paper, several text lines of varying size and length, a little noise."""
    img = np.full((c, h, w), rng.uniform(225, 250)) + (_smooth(rng, h, w, 3) * 12)[None]
    y = int(rng.integers(h // 20, h // 8 + 1))
    while y < h - h // 12:
        line_h = int(rng.integers(max(8, h // 40), max(9, h // 18)))
        x0 = int(rng.integers(w // 20, w // 6 + 1))
        x1 = int(w - rng.integers(w // 20, w // 2 + 1))
        _glyph_row(rng, img, y, min(line_h, h - y), x0, x1)
        y += int(line_h * rng.uniform(1.5, 2.4))
    return img + rng.normal(0, 3, img.shape)


def _textline(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """One cropped text line: glyphs fill most of the height and a random share of the width."""
    img = np.full((c, h, w), rng.uniform(200, 250)) + (_smooth(rng, h, w, 2) * 20)[None]
    margin = max(1, h // 8)
    end = int(w * rng.uniform(0.6, 1.0))
    _glyph_row(rng, img, margin, h - 2 * margin, margin, end)
    return img + rng.normal(0, 3, img.shape)


SCENES: dict[str, Callable[[np.random.Generator, int, int, int], np.ndarray]] = {
    "photo": _photo,
    "document": _document,
    "textline": _textline,
}


def _image(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    """An image per `scene` (0-255), then `* scale`, `- mean`, `/ std` per channel, in `layout`."""
    n, *rest = spec["shape"]
    nhwc = spec.get("layout", "NCHW") == "NHWC"
    h, w, c = rest if nhwc else (rest[1], rest[2], rest[0])
    scene = SCENES[spec.get("scene", "photo")]
    batch = np.stack([np.clip(scene(rng, h, w, c), 0, 255) for _ in range(n)])
    mean = np.asarray(spec.get("mean", [0.0] * c), dtype=np.float64).reshape(1, c, 1, 1)
    std = np.asarray(spec.get("std", [1.0] * c), dtype=np.float64).reshape(1, c, 1, 1)
    batch = (batch * float(spec.get("scale", 1 / 255)) - mean) / std
    if nhwc:
        batch = batch.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(batch, dtype=_dtype(spec))


# ---------------------------------------------------------------- bytes, audio, tokens

_TEXT_FILES = (
    lambda rng, i: "".join(f"def f{k}(x):\n    return x * {k} + {i}\n\n" for k in range(int(rng.integers(5, 120)))),
    lambda rng, i: "{" + ", ".join(f'"key{k}": [{k}, {k * i}, "v{k}"]' for k in range(int(rng.integers(5, 200)))) + "}\n",
    lambda rng, i: "<!DOCTYPE html>\n<html><body>\n" + "".join(f"<p class=\"c{k}\">para {k}</p>\n" for k in range(int(rng.integers(5, 150)))) + "</body></html>\n",
    lambda rng, i: "id,name,value\n" + "".join(f"{k},item{k},{rng.random():.4f}\n" for k in range(int(rng.integers(5, 300)))),
)


def _file_bytes(rng: np.random.Generator, index: int) -> bytes:
    """Bytes of a small file: alternately one of the text templates or a PNG-headed binary."""
    if index % 5 == 4:
        return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.integers(0, 256, int(rng.integers(500, 8000))).astype(np.uint8).tobytes()
    return _TEXT_FILES[index % len(_TEXT_FILES)](rng, index).encode()


def _bytes(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    """magika's features: first `beg` bytes (stripped, padded after) + last `end` bytes (padded before)."""
    beg, end, pad = int(spec.get("beg", 1024)), int(spec.get("end", 1024)), int(spec.get("pad", 256))
    rows = []
    for _ in range(spec["shape"][0]):
        content = _file_bytes(rng, index)
        head, tail = list(content.lstrip()[:beg]), list(content.rstrip()[-end:])
        rows.append(head + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + tail)
    return np.asarray(rows, dtype=_dtype(spec, "int32"))


def _audio(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    """Voiced speech-like frames (a harmonic series under an envelope) on even samples, noise on odd."""
    n, length = spec["shape"]
    t = np.arange(length) / float(spec.get("rate", 16000))
    out = rng.normal(0, 0.003, (n, length))
    if index % 2 == 0:
        f0 = rng.uniform(90, 240)
        voice = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 12))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6.3))
        out += rng.uniform(0.05, 0.3) * voice * envelope / 3
    return out.astype(_dtype(spec))


def _tokens(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    """[CLS] wordpiece ids [SEP] filling the sequence (BERT vocab: 101, 1996-29611, 102)."""
    n, length = spec["shape"]
    lo, hi = spec.get("vocab", [1996, 29612])
    ids = rng.integers(lo, hi, (n, length))
    ids[:, 0], ids[:, -1] = spec.get("cls", 101), spec.get("sep", 102)
    return ids.astype(_dtype(spec, "int64"))


def _ones(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    return np.ones(spec["shape"], dtype=_dtype(spec))


def _zeros(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    return np.zeros(spec["shape"], dtype=_dtype(spec))


def _scalar(spec: Spec, rng: np.random.Generator, index: int) -> np.ndarray:
    return np.asarray(spec["value"], dtype=_dtype(spec))


KINDS: dict[str, Callable[[Spec, np.random.Generator, int], np.ndarray]] = {
    "image": _image,
    "bytes": _bytes,
    "audio": _audio,
    "tokens": _tokens,
    "ones": _ones,
    "zeros": _zeros,
    "scalar": _scalar,
}
