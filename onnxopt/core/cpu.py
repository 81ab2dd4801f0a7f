"""CPU instruction-set detection (AVX2, AVX-512, VNNI, AMX, ARM dot-product) for ordering int8 candidates."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction sets that decide whether int8 kernels beat fp32 on this CPU."""

    arch: str
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx: bool = False
    arm_dotprod: bool = False
    arm_i8mm: bool = False

    @property
    def vnni(self) -> bool:
        """True when the CPU has an 8-bit dot-product instruction (x86 VNNI/AMX or ARM sdot)."""
        return self.avx512_vnni or self.avx_vnni or self.amx or self.arm_dotprod

    @property
    def is_arm(self) -> bool:
        """True on ARM / AArch64."""
        return self.arch.lower() in ("arm64", "aarch64") or self.arch.lower().startswith("arm")

    @property
    def summary(self) -> str:
        """A short human label such as 'x86_64 AVX2 (no VNNI)'."""
        if self.is_arm:
            return f"{self.arch} " + ("dot-product" if self.arm_dotprod else "no dot-product")
        sets = [n for n, on in (("AVX2", self.avx2), ("AVX-512", self.avx512f), ("AVX512-VNNI", self.avx512_vnni),
                                ("AVX-VNNI", self.avx_vnni), ("AMX", self.amx)) if on]
        text = f"{self.arch} " + (" ".join(sets) or "no AVX2")
        return text if self.vnni else text + " (no VNNI)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (with the derived vnni flag)."""
        d = asdict(self)
        d["vnni"] = self.vnni
        d["summary"] = self.summary
        return d


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """CpuFeatures from the text of /proc/cpuinfo (x86 'flags' or ARM 'Features' lines)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
            break  # every core lists the same flags
    return CpuFeatures(
        arch=arch,
        avx2="avx2" in flags,
        avx512f="avx512f" in flags,
        avx512_vnni="avx512_vnni" in flags or "avx512vnni" in flags,
        avx_vnni="avx_vnni" in flags,
        amx=any(f.startswith("amx") for f in flags),
        arm_dotprod="asimddp" in flags,
        arm_i8mm="i8mm" in flags,
    )


def detect_cpu() -> CpuFeatures:
    """Detect this machine's instruction sets (Linux /proc/cpuinfo; Apple arm64 has dot-product)."""
    arch = platform.machine() or "unknown"
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    feats = parse_cpuinfo(text, arch)
    if not text and arch.lower() in ("arm64", "aarch64") and platform.system() == "Darwin":
        # Every Apple silicon core has sdot/udot.
        feats = CpuFeatures(arch=arch, arm_dotprod=True)
    return feats
