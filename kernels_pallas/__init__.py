"""Attention kernels for tree verification: Pallas (Mosaic GPU, Triton, Mosaic TPU) beside a jnp reference."""

from kernels_pallas.reference import tree_attention_reference

__all__ = ["tree_attention_reference"]
