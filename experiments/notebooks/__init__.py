"""Experiment notebooks (see make_notebooks.py and run_notebooks.py)."""
