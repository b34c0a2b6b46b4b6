"""Benchmarks and measured experiments: scripts that print their figures and the machine they ran on.

Each runs from the repository root as `python -m bench.<name> [options]` (`--help` lists them): app, backbones,
mdm_speed, mdm_convergence, mdm_eta, ood, reader, rsna_recipes. Shared helpers live in bench/common.py.
"""
