"""Scaling experiments (issue 15): one module per experiment, each writing a JSON result file.

    budget            1  acceptance and speedup against the target budget, every policy, T 0 / 1
    temperature       2  acceptance against temperature, with and without top-p, per drafter
    training_tokens   3  acceptance against draft training tokens, fitted log-linear law
    capacity          4  acceptance against draft capacity, fitted log-linear law
    batch             5  throughput and speedup against batch size, with and without trees
    depth             6  acceptance by depth and accepted-length distribution, per drafter
    time_split        7  draft / verify forward / verify walk / commit time per step, roofline

Each runs as `python -m experiments.scaling.<module> [--smoke]`; `common` holds what they share
and `fit` the log-linear fits with bootstrap intervals. experiments/notebooks plots the results.
"""
