"""Training: data, tokenizer, reference target and draft models, draft-head training.

Flax NNX + optax + orbax.
"""
