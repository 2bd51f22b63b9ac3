"""Benchmark suites behind ``motioncache bench SUITE`` (results land in ``benchmarks/``)."""
