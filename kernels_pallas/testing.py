"""Random inputs shared by the kernel tests and the kernel benchmark."""

import numpy as np


def random_tree_mask(rng: np.random.Generator, batch: int, block: int, width: int) -> np.ndarray:
    """[B, T, R] ancestor masks of random trees: node i's parent is uniform in [0, i)."""
    mask = np.zeros((batch, block, width), bool)
    for b in range(batch):
        for i in range(block):
            mask[b, i, i] = True
            if i:
                parent = rng.integers(0, i)
                mask[b, i, :i] = mask[b, parent, :i]
                mask[b, i, parent] = True
    return mask
