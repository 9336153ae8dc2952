"""Benchmarks of the gateway against the simulator, with the floor and direct baselines.

``python -m bench`` (or ``make bench``); see ``bench/README.md``.
"""
