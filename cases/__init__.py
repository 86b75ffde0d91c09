"""Benchmark cases: one package per case (``cases/retinanet``), each exposing ``CASE``."""
