"""The Pallas kernel on the model's real code path: speculative greedy output is identical with the
kernel (Triton, interpret mode on CPU) and with the XLA reference."""

import numpy as np

import specdec
from drafters import DraftModel, NGram
from trees import Chain, Static

PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2]]


def test_kernel_and_xla_paths_agree_in_speculative_decoding(llama, tiny_draft):
    kernel = llama.with_attention("interpret")
    for drafter, policy in [
        (DraftModel(tiny_draft), Static([[0], [1], [0, 0], [0, 1], [0, 0, 0]])),
        (NGram(2), Chain(3)),
    ]:
        xla = specdec.generate(llama, PROMPTS, max_new_tokens=12, drafter=drafter, policy=policy)
        pallas = specdec.generate(
            kernel, PROMPTS, max_new_tokens=12, drafter=drafter, policy=policy
        )
        np.testing.assert_array_equal(pallas.tokens, xla.tokens)
    plain = specdec.generate(llama, PROMPTS, max_new_tokens=12)
    np.testing.assert_array_equal(pallas.tokens, plain.tokens)


def test_auto_resolves_to_the_reference_on_cpu(llama):
    auto = llama.with_attention("auto")
    ids = np.array([PROMPTS[0]])
    np.testing.assert_array_equal(np.asarray(auto.logits(ids)), np.asarray(llama.logits(ids)))
