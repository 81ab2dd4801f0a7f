"""optimize()'s work directory: every stage's model in a file instead of in memory.

A run keeps the input and each model a pass changed as `<n>-<pass>.onnx` in a private temporary
folder, weights of 1 KiB or more in external data beside it (core.external.write_external:
written tensor by tensor, the model untouched). Sessions (verification, benchmark, the pass
checks) load from these files, and the run holds only each stage's graph-only proto: at most one
full model (the one the next pass works on) besides the caller's input (none when optimize() is
given a path, as the CLI does: the input is hashed and written here, then held as a graph; a big
one with external data is never loaded whole for it, see run._put_input). A model of KEEP_BYTES or
less stays in memory as well (it costs little, and Stage.model then still has its weights after
the run, as API users may expect). The folder is removed when the run ends, failed or not; the
result model is loaded from it before.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import onnx
from onnx import ModelProto

from onnxopt.core.external import byte_size, load_external, write_external

PREFIX = "onnxopt-optimize-"
KEEP_BYTES = 16 * 2**20  # stage models up to this size are kept in memory too


class StageStore:
    """A temporary folder of stage models; use as a context manager (removed on exit)."""

    def __init__(self, parent: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))

    def __enter__(self) -> StageStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def put(self, model: ModelProto, name: str) -> tuple[Path, ModelProto]:
        """Write model as `<name>.onnx` (+ `.data`); (its path, its graph-only proto, or the model
        itself when it is KEEP_BYTES or less)."""
        path = self.dir / f"{name}.onnx"
        write_external(model, path)
        return path, (model if byte_size(model) <= KEEP_BYTES else graph_of(path))

    def put_graph(self, graph: ModelProto, base_dir: Path, name: str) -> tuple[Path, ModelProto]:
        """Write the model whose graph-only proto is `graph` (weights in external data under
        base_dir, copied tensor by tensor) as `<name>.onnx`; (its path, its graph-only proto)."""
        path = self.dir / f"{name}.onnx"
        write_external(graph, path, base_dir=base_dir)
        return path, graph_of(path)

    def close(self) -> None:
        """Remove the folder and every model in it."""
        shutil.rmtree(self.dir, ignore_errors=True)


def graph_of(path: Path) -> ModelProto:
    """The model at path without its external data (the graph, small initializers inline)."""
    return onnx.load(str(path), load_external_data=False)


def load_full(path: Path) -> ModelProto:
    """The model at path with its weights (its external data read into the proto)."""
    return load_external(path)
