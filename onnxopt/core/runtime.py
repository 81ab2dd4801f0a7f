"""onnxruntime sessions with onnxopt's conventions: creation (custom ops, threads, spinning,
log severity) and running, with any onnxruntime error turned into one OnnxoptError line.

`create_session` raises InvalidModelError when onnxruntime cannot load a model; `run` (and
`run_error`, for timing loops that call `sess.run` themselves) raises ModelRunError naming the
node that failed and what to check. onnxruntime's C++ logging goes to stderr directly, so its
severity is set here once for the process (`set_log_severity`): errors only unless -v.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, InvalidModelError, ModelRunError, OnnxoptError

log = logging.getLogger(__name__)

# onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
FATAL, ERROR, WARNING = 4, 3, 2
# Quiet by default: an onnxruntime error that matters is raised, and reaches the user as the
# exception's one line; its own [E:onnxruntime] log line would only repeat it in colour.
_severity = FATAL


def set_log_severity(level: int) -> None:
    """onnxruntime's C++ log severity for this process: its default logger and every session
    created from now on (the CLI: FATAL, i.e. quiet, by default; WARNING with -v)."""
    global _severity
    _severity = level
    ort.set_default_logger_severity(level)


def log_severity() -> int:
    """The severity set by set_log_severity (sessions and helpers that change it restore this)."""
    return _severity

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# Providers that run on the CPU side of the machine (no GPU/NPU needed).
CPU_SIDE_PROVIDERS = (
    "CPUExecutionProvider",
    "DnnlExecutionProvider",
    "OpenVINOExecutionProvider",
    "XnnpackExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
)


def physical_cores() -> int:
    """Number of physical cores (falls back to logical CPUs)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:  # psutil can fail in odd containers
        pass
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _extensions_library() -> str | None:
    # Importing onnxruntime_extensions takes seconds (it pulls in its converters); the
    # custom-op library is a shared object inside the package, so locate it without importing.
    try:
        spec = importlib.util.find_spec("onnxruntime_extensions")
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            for lib in sorted(Path(folder).glob("_extensions_pydll*")):
                if lib.suffix in (".so", ".pyd", ".dylib"):
                    return str(lib)
    except Exception as e:  # the extension package is optional at run time
        log.debug("onnxruntime-extensions unavailable: %s", e)
    return None


@dataclass(frozen=True)
class SessionConfig:
    """How to build an onnxruntime session."""

    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 0  # 0: onnxruntime's default
    inter_op_threads: int = 0
    opt_level: str = "all"
    allow_spinning: bool = True
    custom_ops: bool = True
    # False: no packed copies of the weights (session.disable_prepacking), for a session that is
    # only created, never run (a load check, an offline optimization): about one model size less.
    prepack: bool = True

    def __post_init__(self) -> None:
        if self.opt_level not in OPT_LEVELS:
            raise InvalidInputError(
                f"unknown optimization level {self.opt_level!r}; choose one of {', '.join(OPT_LEVELS)}"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise InvalidInputError("thread counts must be >= 0")
        available = ort.get_available_providers()
        if self.provider not in available:
            raise InvalidInputError(
                f"execution provider {self.provider!r} is not available; available: {', '.join(available)}"
            )


def bench_session(threads: int = 0) -> SessionConfig:
    """The session settings of a measurement: `threads` intra-op threads (0: one per physical
    core), no spinning (an idle spinning session steals the cores of the one being timed)."""
    return SessionConfig(intra_op_threads=threads or physical_cores(), allow_spinning=False)


def session_options(config: SessionConfig) -> ort.SessionOptions:
    """SessionOptions for a config."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[config.opt_level]
    if config.intra_op_threads:
        so.intra_op_num_threads = config.intra_op_threads
    if config.inter_op_threads:
        so.inter_op_num_threads = config.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if not config.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not config.prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.log_severity_level = _severity
    if config.custom_ops:
        lib = _extensions_library()
        if lib:
            so.register_custom_ops_library(lib)
    return so


def create_session(
    model: ModelProto | bytes | str | os.PathLike[str],
    config: SessionConfig | None = None,
    **kwargs: Any,
) -> ort.InferenceSession:
    """An InferenceSession for a model (proto, bytes or path); InvalidModelError if it cannot load."""
    cfg = config or SessionConfig(**kwargs)
    so = session_options(cfg)
    if isinstance(model, ModelProto):
        from onnxopt.core.external import as_file, needs_file

        if needs_file(model):  # big: through a file, not serialized bytes (onnxopt.core.external)
            try:
                with as_file(model) as path:
                    return _session(str(path), so, cfg, model.graph.name or "model")
            except ValueError as e:
                raise InvalidModelError(f"onnxruntime cannot load {model.graph.name or 'model'}: {e}") from e
        return _session(model.SerializeToString(), so, cfg, model.graph.name or "model")
    if isinstance(model, bytes):
        return _session(model, so, cfg, "model")
    return _session(str(Path(model)), so, cfg, str(Path(model)))


def _session(src: Any, so: ort.SessionOptions, cfg: SessionConfig, name: str) -> ort.InferenceSession:
    printed = io.StringIO()
    try:
        # onnxruntime print()s an "EP Error" banner to stdout when a provider fails: keep it out of ours.
        with contextlib.redirect_stdout(printed):
            return ort.InferenceSession(src, sess_options=so, providers=[cfg.provider])
    except Exception as e:
        log.debug("onnxruntime printed: %s", printed.getvalue().strip())
        msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
        raise InvalidModelError(f"onnxruntime cannot load {name}: {msg}") from e


# Op domains onnxruntime implements itself; anything else needs the onnxruntime-extensions library.
_BUILTIN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.training"}


def needs_custom_ops(model: ModelProto) -> bool:
    """True when the model uses op domains that only onnxruntime-extensions provides."""
    return any(o.domain not in _BUILTIN_DOMAINS for o in model.opset_import)


def lean_session(proto: ModelProto, session: SessionConfig) -> SessionConfig:
    """The session config without the custom-op library when the model does not need it."""
    # Loading the extensions library costs seconds (it imports torch when installed) and
    # changes nothing for models without custom ops: skip it for them.
    if session.custom_ops and not needs_custom_ops(proto):
        return replace(session, custom_ops=False)
    return session


_NODE = re.compile(r"Name:'(?P<name>[^']*)'")
_OP = re.compile(r"while running (?P<op>[\w.]+) node")
_STATUS = re.compile(r"Status Message:\s*(?P<msg>.*)", re.S)
_SOURCE = re.compile(r"^/\S+:\d+ (?=[^()]*::[^()]*\()")  # "/src/x.cc:91 [ret] ns::fn(" ahead
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def run_error(e: BaseException, what: str = "the model") -> OnnxoptError:
    """The one-line OnnxoptError for an exception raised by InferenceSession.run.

    onnxruntime names the failing node as "Name:'...'" in its message; the error states that
    node, its op type, onnxruntime's reason, and what to check.
    """
    if isinstance(e, OnnxoptError):
        return e
    text = " ".join(str(e).split()) or type(e).__name__
    node, op, status = _NODE.search(text), _OP.search(text), _STATUS.search(text)
    reason = _without_source_location((status["msg"] if status else _ORT_PREFIX.sub("", text)).strip())[:300]
    if node is not None:
        where = f" at node {node['name']!r}" + (f" ({op['op']})" if op else "")
        hint = "the model loads but this node fails on these inputs: check the node with `onnxopt inspect` and that the inputs (--data, --shape, --batch) fit the model"
    else:
        where = ""
        hint = "check that the inputs (--data, --shape, --batch) fit the model's inputs"
    return ModelRunError(f"onnxruntime failed while running {what}{where}: {reason}; {hint}")


def _without_source_location(msg: str) -> str:
    """onnxruntime's reason without the C++ file, line and function signature before it."""
    m = _SOURCE.match(msg)
    if m is None:
        return msg
    rest = msg[m.end() :]
    depth = 0
    for i, ch in enumerate(rest):  # skip the signature "ns::Class::fn(args...)" up to its closing parenthesis
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return rest[i + 1 :].removeprefix(" const").strip() or msg
    return msg


def run(
    sess: ort.InferenceSession,
    feed: Mapping[str, Any],
    outputs: Sequence[str] | None = None,
    *,
    what: str = "the model",
) -> list[Any]:
    """sess.run(outputs, feed); any onnxruntime error becomes a ModelRunError naming the node."""
    try:
        return list(sess.run(list(outputs) if outputs is not None else None, dict(feed)))
    except Exception as e:
        raise run_error(e, what) from e
