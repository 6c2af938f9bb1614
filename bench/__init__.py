"""Benchmarks: each measures the project from outside, through its public interfaces."""
