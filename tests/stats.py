"""Statistical losslessness helpers: exact sequence distributions and a chi-square test."""

import itertools

import jax.numpy as jnp
import jax.scipy.special
import numpy as np

import specdec
from specdec.sampling import SamplingParams, probabilities


def exact_sequence_probs(
    model: specdec.Model, prompt: list[int], length: int, params: SamplingParams
) -> np.ndarray:
    """P(first `length` new tokens = s) under the target, for all V**length sequences s.

    Index of s = sum_i s_i * V**(length-1-i) (row-major over the tuple).
    """
    vocab = model.config.vocab_size
    probs = np.ones((1,), np.float64)
    prefixes: list[tuple[int, ...]] = [()]
    for _ in range(length):
        ids = np.array([prompt + list(p) for p in prefixes], np.int32)
        logits = model.logits(ids)[:, -1]  # [num_prefixes, V]
        step = np.asarray(probabilities(logits, params), np.float64)
        probs = (probs[:, None] * step).reshape(-1)
        prefixes = [(*p, t) for p in prefixes for t in range(vocab)]
    return probs / probs.sum()


def sequence_index(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """Row-major index of each row of tokens [N, length]."""
    weights = vocab ** np.arange(tokens.shape[1] - 1, -1, -1)
    return tokens @ weights


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit, pooling cells with expected count < min_expected."""
    total = counts.sum()
    expected = probs * total
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    if np.any((exp == 0) & (obs > 0)):
        return 0.0
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    return float(jax.scipy.special.gammaincc(dof / 2.0, jnp.float32(stat / 2.0)))


def all_sequences(vocab: int, length: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(vocab), repeat=length))


STAT_PROMPT, STAT_LENGTH, STAT_SAMPLES = [1, 3, 2], 3, 20_000


def stat_pvalue(target, drafter, policy, seed: int = 2, **sampling) -> tuple[float, float]:
    """(chi-square p-value, tau) of 20 000 speculative samples of 3 tokens against the exact law."""
    vocab = target.config.vocab_size
    exact = exact_sequence_probs(
        target, STAT_PROMPT, STAT_LENGTH, SamplingParams.create(**sampling)
    )
    out = specdec.generate(
        target,
        [STAT_PROMPT] * STAT_SAMPLES,
        max_new_tokens=STAT_LENGTH,
        drafter=drafter,
        policy=policy,
        seed=seed,
        **sampling,
    )
    counts = np.bincount(sequence_index(out.tokens, vocab), minlength=vocab**STAT_LENGTH)
    return chi_square_pvalue(counts, exact), out.stats.tau
