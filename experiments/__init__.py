"""Experiments: the demo, benchmark scripts and notebooks that measure speed and acceptance."""
