"""The README demo: build a tiny model, generate, print tokens and timing.

Until the trained reference pair exists (train/ issue), this uses a random-weight 2-layer model,
so the tokens are meaningless; what it shows is the API, batching with ragged prompts, and timing.
"""

import jax

import specdec
from drafters import NGram
from specdec.config import tiny_config
from trees import Chain


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    model = specdec.Model.random(tiny_config(vocab_size=512), seed=0)
    print(model)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [42, 7, 42, 7, 42, 7]]
    for label, kwargs in [
        ("plain greedy", {}),
        ("plain, temperature 0.8 top-p 0.9", dict(temperature=0.8, top_p=0.9)),
        ("n-gram drafter + Chain(4), greedy", dict(drafter=NGram(), policy=Chain(4))),
    ]:
        out = specdec.generate(model, prompts, max_new_tokens=24, **kwargs)
        print(f"\n[{label}]")
        for b, seq in enumerate(out.sequences()):
            print(f"  sequence {b}: {seq}")
        print(f"  {out.stats.summary()}")


if __name__ == "__main__":
    main()
