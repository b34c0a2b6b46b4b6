"""Benchmarks and measured experiments: scripts that print their figures and the machine they ran on.

Run from the repository root as `python -m bench.<name>` (the older ones also as `python bench/<name>.py`).
"""
