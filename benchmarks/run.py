"""`make bench`: side-by-side benchmark ratios measured in one run (filled in by later issues)."""

from __future__ import annotations


def main() -> None:
    """Print the benchmark table."""
    raise SystemExit("make bench: not built yet (benchmark issue)")


if __name__ == "__main__":
    main()
