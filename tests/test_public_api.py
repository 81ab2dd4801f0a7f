"""The public API: every name in onnxopt.__all__ resolves, and resolving them stays light."""

from __future__ import annotations

import subprocess
import sys


def test_all_public_names_resolve_without_frameworks() -> None:
    code = (
        "import sys, onnxopt\n"
        "missing = [n for n in onnxopt.__all__ if not hasattr(onnxopt, n)]\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(missing, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] []", r.stdout


def test_unknown_attribute_raises() -> None:
    import onnxopt

    try:
        onnxopt.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
