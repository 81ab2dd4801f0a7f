"""The files a command reads and writes: checked before any work, written all or nothing.

A `FilePlan` lists every path a command reads (model, weights, data, recipe, teacher, ...),
every file it writes (model, reports, logs, plots) and every folder it creates (work dirs).
`FilePlan.check()` refuses, before any work starts: a write that names a file the command reads
(symlinks and hard links resolved), two writes to the same file, a write onto a directory (these
are usage errors, exit code 2), and a destination that cannot be written (exit code 1).

`Outputs` stages every artifact in a hidden folder beside its target and moves them into place
only when the command succeeds (`commit`); on any failure the staged files, and the folders
staging created, are removed, so a failed command leaves nothing behind and never replaces an
existing file with a partial one.

`scratch_cwd()` runs third-party code that writes into the current directory (onnxruntime's
symbolic shape inference leaves `sym_shape_infer_temp.onnx` and `<uuid>.data` there) inside a
temporary directory that is always removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, InvalidOptionError, OnnxoptError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Named = Mapping[str, PathLike | Iterable[PathLike] | None]


def _flatten(named: Named) -> tuple[tuple[str, Path], ...]:
    out: list[tuple[str, Path]] = []
    for label, value in named.items():
        if value is None:
            continue
        values = [value] if isinstance(value, str | os.PathLike) else list(value)
        out.extend((label, Path(v)) for v in values)
    return tuple(out)


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists): equal for links to one file."""
    resolved = str(path.resolve())
    try:
        st = path.stat()
    except OSError:
        return resolved, None
    return resolved, (st.st_dev, st.st_ino)


def _same(a: tuple[str, tuple[int, int] | None], b: tuple[str, tuple[int, int] | None]) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _writable_dir(directory: Path) -> Path | None:
    """The nearest existing ancestor of directory when it cannot be written into, else None."""
    d = directory
    while not d.exists():
        if d.parent == d:
            return d
        d = d.parent
    if not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
        return d
    return None


@dataclass(frozen=True)
class FilePlan:
    """Every file a command reads and writes, and every folder it creates, as (option label, path)."""

    reads: tuple[tuple[str, Path], ...] = ()
    writes: tuple[tuple[str, Path], ...] = ()
    dirs: tuple[tuple[str, Path], ...] = ()

    @classmethod
    def of(cls, *, reads: Named | None = None, writes: Named | None = None, dirs: Named | None = None) -> FilePlan:
        """A plan from {label: path | [paths] | None}; None entries are options not given."""
        return cls(_flatten(reads or {}), _flatten(writes or {}), _flatten(dirs or {}))

    def check(self) -> None:
        """Raise (one line naming both options) when the plan is unsafe: InvalidOptionError for
        paths that clash or name a folder, InvalidInputError for a destination that cannot be written."""
        read_ids = [(label, path, _identity(path)) for label, path in self.reads]
        seen: list[tuple[str, Path, tuple[str, tuple[int, int] | None]]] = []
        for label, path in self.writes:
            ident = _identity(path)
            _not_read(label, path, ident, read_ids)
            for w_label, w_path, w_ident in seen:
                if _same(ident, w_ident):
                    raise InvalidOptionError(
                        f"{label} {path} and {w_label} {w_path} name the same file; give each its own path"
                    )
            seen.append((label, path, ident))
            if path.is_dir():
                raise InvalidOptionError(f"{label} {path}: is a directory; give a file name")
            if path.exists() and not os.access(path, os.W_OK):
                raise InvalidInputError(f"{label} {path}: the file is not writable")
            _parent_writable(label, path)
        for label, path in self.dirs:
            _not_read(label, path, _identity(path), read_ids)
            if path.exists() and not path.is_dir():
                raise InvalidOptionError(f"{label} {path}: is a file; give a folder")
            _parent_writable(label, path / "x")


def _not_read(
    label: str, path: Path, ident: tuple[str, tuple[int, int] | None],
    read_ids: list[tuple[str, Path, tuple[str, tuple[int, int] | None]]],
) -> None:  # fmt: skip
    for r_label, r_path, r_ident in read_ids:
        if _same(ident, r_ident):
            raise InvalidOptionError(
                f"{label} {path}: is the {r_label} this command reads ({r_path}); "
                "choose another path: onnxopt never overwrites its inputs"
            )


def _parent_writable(label: str, path: Path) -> None:
    blocked = _writable_dir(path.parent if str(path.parent) else Path("."))
    if blocked is not None:
        raise InvalidInputError(
            f"{label} {path}: cannot write into {blocked} (permission denied or not a folder); "
            "choose a writable location"
        )


class Outputs:
    """Artifacts staged beside their targets and moved into place together on `commit()`.

    Use as a context manager: leaving the block with an exception removes every staged file;
    leaving it normally without commit() also discards them.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, list[str]]] = []  # (stage dir, target, file names)
        self._created: list[Path] = []  # folders made for the targets, removed again on failure
        self._committed = False

    def __enter__(self) -> Outputs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            self.discard()

    def _stage_dir(self, target: Path) -> Path:
        missing = []
        d = target.parent
        while not d.exists() and d.parent != d:
            missing.append(d)
            d = d.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))

    def text(self, target: PathLike, text: str) -> Path:
        """Stage a text file (UTF-8) for target."""
        return self.data(target, text.encode("utf-8"))

    def data(self, target: PathLike, data: bytes) -> Path:
        """Stage a binary file for target."""
        out = Path(target)
        try:
            stage = self._stage_dir(out)
            (stage / out.name).write_bytes(data)
        except OSError as e:
            raise OnnxoptError(f"{out}: cannot write: {e.strerror or e}") from e
        self._staged.append((stage, out, [out.name]))
        return out

    def path(self, target: PathLike) -> Path:
        """A staged path for target, for code that writes the file itself (e.g. a plot);
        whatever it writes there (the file and its siblings) is moved beside target on commit."""
        out = Path(target)
        try:
            stage = self._stage_dir(out)
        except OSError as e:
            raise OnnxoptError(f"{out}: cannot write: {e.strerror or e}") from e
        self._staged.append((stage, out, []))  # the names are read at commit
        return stage / out.name

    def model(self, target: PathLike, model: ModelProto, *, external_data: bool | None = None) -> Path:
        """Stage an ONNX model (and its `<name>.data` external-data file when one is written)."""
        from onnxopt.core.model import save_model

        out = Path(target)
        try:
            stage = self._stage_dir(out)
            save_model(model, stage / out.name, external_data=external_data)
        except OSError as e:
            raise OnnxoptError(f"{out}: cannot write: {e.strerror or e}") from e
        names = [p.name for p in stage.iterdir()]
        self._staged.append((stage, out, names))
        return out

    def commit(self) -> None:
        """Move every staged file onto its target (each move is an atomic rename)."""
        try:
            for stage, target, names in self._staged:
                for name in names or sorted(p.name for p in stage.iterdir()):
                    os.replace(stage / name, target.parent / name)
        except OSError as e:
            raise OnnxoptError(f"cannot move the results into place: {e}") from e
        except BaseException:
            self.discard()
            raise
        self._created.clear()  # they hold the results now
        self.discard()
        self._committed = True

    def discard(self) -> None:
        """Remove every staged file and the folders staging created (targets are untouched)."""
        for stage, _, _ in self._staged:
            shutil.rmtree(stage, ignore_errors=True)
        self._staged.clear()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a folder something else wrote into stays
        self._created.clear()


@contextlib.contextmanager
def staged(plan: FilePlan) -> Iterator[Outputs]:
    """Check the plan, then yield an Outputs that commits when the block succeeds.

    ``with staged(plan) as out: out.model(path, model); out.text(report_path, text)``
    """
    plan.check()
    with Outputs() as out:
        yield out
        out.commit()


@contextlib.contextmanager
def scratch_cwd(prefix: str = "onnxopt-") -> Iterator[Path]:
    """Run the block in a fresh temporary directory (the current directory), always removed.

    For third-party code that writes files into the current directory. Paths given to it must be
    absolute. The working directory is process-wide: not for use from several threads at once.
    """
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)
