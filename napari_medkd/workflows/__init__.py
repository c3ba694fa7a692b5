"""Whole jobs composed from the layers below: evaluation, the main pipeline, benchmarks, reports."""
