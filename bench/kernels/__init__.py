"""Kernel micro-benchmarks: each kernel against its reference or its hardware floor."""
