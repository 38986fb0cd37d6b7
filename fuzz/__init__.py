"""Fuzz targets and the input-damaging helpers shared with the robustness tests (tests/test_robust_*.py)."""
