"""Benchmark suites behind ``motioncache bench SUITE`` (results land in ``benchmarks/``)."""

SUITE_NAMES: tuple[str, ...] = (
    "pareto",
    "overhead",
    "memory",
    "granularity",
    "cuts",
    "long",
    "throughput",
    "cfg",
    "oracle",
    "fleet",
)
"""Every suite's name, known without importing torch or the model code, so that the CLI refuses a
mistyped suite at once; ``bench.suites.SUITES`` (with ``fleet.bench``'s entry) must match it (tested)."""
