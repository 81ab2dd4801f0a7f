"""Executable documentation: every fenced block of README.md and docs/*.md runs as written, or is
explicitly marked illustrative.

Conventions (explained in the README, "The examples run as written"):
- `<!-- illustrative: reason -->` on the line before a fence: the block is not run.
- `<!-- exit: 3 -->` (or `<!-- exit: 0 3 -->`): the exit code(s) the block may end with.
Shell blocks run with bash (-e, pipefail) and Python blocks with this interpreter, each in a
fresh scratch directory holding a copy of models/ and examples/, so outputs never land in the
repository; the venv's bin is first on PATH. TOML blocks are loaded as a recipe ([[passes]])
or a search space. Every `build/...` path a runnable block names must exist afterwards.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
COPIED = ("models", "examples")  # what examples read; large/ (make models) is not needed
SHELL = ("bash", "sh", "shell")
RUNNABLE = ("python", *SHELL, "toml")

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*(illustrative|exit)\b:?\s*(.*?)\s*-->\s*$")
_BUILD_PATH = re.compile(r"(?<![\w./-])(build/[\w./-]*\w)")
_DOTTED = re.compile(r"`(onnxopt(?:\.[A-Za-z_]\w*)+)(?=[`(\[])")


@dataclass(frozen=True)
class Block:
    """One fenced code block and what its markers say."""

    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    heading: str
    illustrative: str | None  # the reason; None when the block runs
    exits: tuple[int, ...]
    markers: tuple[str, ...]  # every HTML comment right before the fence

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:40]
        return f"{self.doc.name}:{self.line}:{slug}"


def extract_blocks(doc: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with its heading and the markers before it."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    heading, i = "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        m = _FENCE.match(line)
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)), None)
        assert end is not None, f"{doc.name}:{i + 1}: unclosed code fence"
        markers: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("<!--"):
            markers.insert(0, lines[j].strip())
            j -= 1
        illustrative, exits = None, (0,)
        for marker in markers:
            mm = _MARKER.match(marker)
            if mm and mm.group(1) == "illustrative":
                illustrative = mm.group(2) or "illustrative"
            elif mm and mm.group(1) == "exit":
                exits = tuple(int(x) for x in mm.group(2).replace(",", " ").split())
        blocks.append(Block(doc, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", heading, illustrative, exits, tuple(markers)))
        i = end + 1
    return blocks


BLOCKS = [b for doc in DOCS for b in extract_blocks(doc)]
TO_RUN = [b for b in BLOCKS if b.illustrative is None]


def test_every_block_runs_or_is_marked_illustrative() -> None:
    assert len(BLOCKS) >= 20, "the extractor found too few blocks"
    unmarked = [b.id for b in BLOCKS if b.illustrative is None and b.lang not in RUNNABLE]
    assert unmarked == [], "runnable languages are python, bash/sh, toml; mark the others <!-- illustrative: why -->"
    unknown = [f"{b.id}: {m}" for b in BLOCKS for m in b.markers if not _MARKER.match(m)]
    assert unknown == [], "unknown marker before a code fence (use illustrative or exit)"
    assert all(b.exits for b in BLOCKS)


def test_readme_python_api_block_is_run_verbatim() -> None:
    """The README's 'Python API at a glance' block is one Python block, not illustrative, so
    test_block runs its text as written, top to bottom."""
    api = [b for b in BLOCKS if b.doc.name == "README.md" and b.heading == "Python API at a glance"]
    assert len(api) == 1 and api[0].lang == "python" and api[0] in TO_RUN
    for call in ("load_model", "validate_model", "describe", "prune_channels", "quantize(", "benchmark(",
                 "latency_ratio", "optimize(", "save_model"):
        assert f"onnxopt.{call}" in api[0].code, call


def test_documented_module_paths_resolve() -> None:
    """Every `onnxopt.x.y` named in the docs' prose is importable (no stale module paths)."""
    names = sorted({m.group(1) for doc in DOCS for m in _DOTTED.finditer(doc.read_text(encoding="utf-8"))})
    assert names, "no onnxopt.* references found"
    missing = []
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert missing == []


def _workdir(tmp: Path) -> Path:
    for name in COPIED:
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("large", "__pycache__", "*.opt.onnx"))
    return tmp


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["GITHUB_STEP_SUMMARY"] = str(tmp / "step_summary.md")
    env["MPLBACKEND"] = "Agg"
    env.pop("VIRTUAL_ENV", None)
    return env


def _load_toml(block: Block, tmp: Path) -> None:
    import onnxopt

    if "[[passes]]" in block.code:
        recipe = onnxopt.parse_recipe(block.code, source=block.id)
        assert recipe.passes
    else:
        path = tmp / "space.toml"
        path.write_text(block.code)
        space = onnxopt.load_space(path)
        assert space.genes


@pytest.mark.parametrize("block", TO_RUN, ids=[b.id for b in TO_RUN])
def test_block(block: Block, tmp_path: Path) -> None:
    if block.lang not in RUNNABLE:
        pytest.fail(f"{block.id}: ```{block.lang} blocks cannot run; mark it <!-- illustrative: why -->")
    work = _workdir(tmp_path)
    if block.lang == "toml":
        _load_toml(block, work)
        return
    if block.lang == "python":
        (work / "block.py").write_text(block.code)
        cmd = [sys.executable, "block.py"]
    else:
        if shutil.which("onnxopt", path=str(Path(sys.executable).parent)) is None:
            pytest.skip(f"no onnxopt command beside {sys.executable}: install the package (make install)")
        (work / "block.sh").write_text(block.code)
        cmd = ["bash", "-e", "-o", "pipefail", "block.sh"]
    r = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=600)
    assert r.returncode in block.exits, (
        f"{block.id} exited {r.returncode}, expected {block.exits}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    )
    missing = sorted({p for p in _BUILD_PATH.findall(block.code) if not (work / p).exists()})
    assert missing == [], f"{block.id} did not write {missing}\n{r.stderr[-2000:]}"
