"""The README demo: speculative decoding with the tiny reference pair, against plain decoding.

The pair (a 4-layer target and a 2-layer draft distilled from it, trained on ShareGPT with this
repository's own tokenizer) is trained on first use, which takes a few minutes on a 2-core CPU,
and cached under artifacts/reference/. Prompts: held-out ShareGPT user turns and a HumanEval task.
Every run decodes the same prompts as one batch; speed is new tokens / wall time with compilation
excluded (each configuration runs once to compile, then once timed).
"""

import time

import jax

import specdec
from drafters import DraftModel
from train.data import heldout_prompts, humaneval_prompts
from train.reference import reference_pair
from trees import Chain, Static

MAX_NEW_TOKENS = 64
MAX_PROMPT_TOKENS = 96  # the tiny models were trained on 256-token windows
TREE = Static([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]])


def pick_prompts(tokenizer, n_chat: int = 3):
    """n_chat short held-out ShareGPT prompts and the shortest HumanEval prompt, as token ids."""
    chat = [p for p in heldout_prompts(60) if len(tokenizer.encode(p.text)) <= MAX_PROMPT_TOKENS]
    code = min(humaneval_prompts(), key=lambda p: len(p.text))
    prompts = [*chat[:n_chat], code]
    return prompts, [tokenizer.encode(p.text)[-MAX_PROMPT_TOKENS:] for p in prompts]


def timed(target, ids, **kwargs):
    specdec.generate(target, ids, max_new_tokens=MAX_NEW_TOKENS, **kwargs)  # compile + warm up
    return specdec.generate(target, ids, max_new_tokens=MAX_NEW_TOKENS, **kwargs)


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    start = time.perf_counter()
    print(
        "loading the tiny reference pair (the first run trains it: a few minutes on a 2-core "
        "CPU, then cached under artifacts/reference/) ...",
        flush=True,
    )
    target_dir, draft_dir = reference_pair("tiny", progress=True)
    print(
        f"target {target_dir}\ndraft  {draft_dir}\nready after {time.perf_counter() - start:.0f}s"
    )
    target = specdec.load(target_dir, dtype="float32")
    draft = specdec.load(draft_dir, dtype="float32")
    print(f"target: {target}\ndraft:  {draft}")

    prompts, ids = pick_prompts(target.tokenizer)
    eos = target.tokenizer.eos_token_ids
    drafter = DraftModel(draft)
    runs = [
        ("plain greedy", {}),
        ("DraftModel + Chain(4), greedy", dict(drafter=drafter, policy=Chain(4))),
        (
            f"DraftModel + Static tree ({len(TREE.paths)} nodes), greedy",
            dict(drafter=drafter, policy=TREE),
        ),
        ("plain, temperature 1", dict(temperature=1.0, seed=0)),
        (
            "DraftModel + Chain(4), temperature 1",
            dict(drafter=drafter, policy=Chain(4), temperature=1.0, seed=0),
        ),
    ]
    outputs = {}
    for label, kwargs in runs:
        outputs[label] = timed(target, ids, eos_token_id=eos, **kwargs)

    plain = outputs["plain greedy"]
    for prompt, seq in zip(prompts, plain.sequences(), strict=True):
        user = prompt.user.strip().replace("\n", " ")
        print(f"\n[{prompt.id}] {user[:100]}{'...' if len(user) > 100 else ''}")
        print(f"  -> {target.tokenizer.decode(seq)!r}")

    print(f"\n{len(ids)} prompts as one batch, up to {MAX_NEW_TOKENS} new tokens each:")
    for label, out in outputs.items():
        base = outputs["plain, temperature 1" if "temperature" in label else "plain greedy"]
        speedup = out.stats.tokens_per_second / base.stats.tokens_per_second
        same = (
            ""
            if "temperature" in label or label == "plain greedy"
            else (
                "  output == plain greedy"
                if (out.tokens == plain.tokens).all()
                else "  output differs from plain greedy (float ties?)"
            )
        )
        print(
            f"  {label:44s} tau {out.stats.tau:4.2f}  {out.stats.tokens_per_second:7.1f} tok/s  "
            f"speedup {speedup:4.2f}x{same}"
        )
    print(
        "\ntau = tokens per target forward per sequence (bonus token included). With models "
        "this small\non a CPU, a forward costs about the same whatever the model's size, so the "
        "draft's forwards\ncost more than tau saves (speedup < 1). Speculative decoding pays "
        "where a target forward\ncosts many draft forwards: large targets on accelerators."
    )


if __name__ == "__main__":
    main()
