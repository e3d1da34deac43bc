"""The README demo: speculative decoding with the tiny reference pair, against plain decoding.

The pair (a 4-layer target and a 2-layer draft distilled from it, trained on ShareGPT with this
repository's own tokenizer) is trained on first use, which takes about 2 minutes on a 2-core CPU,
and cached under artifacts/reference/. Prompts: held-out ShareGPT user turns and a HumanEval task,
each sent as a user turn through the checkpoint's chat template (what `specdec generate` does).
Every run decodes the same prompts as one batch; speed is new tokens / wall time with compilation
excluded: each configuration runs once to compile, then REPEATS times, and the median is reported
(single runs of these millisecond-scale batches vary by tens of percent).
"""

import json
import math
import statistics
import textwrap
import time
from pathlib import Path

import jax

import specdec
from drafters import DraftModel
from train.data import heldout_prompts, humaneval_prompts
from train.reference import reference_pair
from trees import Chain, Static

MAX_NEW_TOKENS = 64
MAX_PROMPT_TOKENS = 96  # the tiny models were trained on 256-token windows
REPEATS = 5  # timed runs per configuration; the median is reported
TREE = Static([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]])
SMALL_TARGET_PPL = 17.6  # the 101M `small` target after one H100 run (README, Results)


def pick_prompts(tokenizer, n_chat: int = 3):
    """n_chat short held-out ShareGPT prompts and the shortest HumanEval prompt, as token ids
    of a user turn through the chat template (no prompt is truncated)."""
    chat = [
        (p, ids)
        for p in heldout_prompts(60)
        if len(ids := tokenizer.encode_chat(p.user)) <= MAX_PROMPT_TOKENS
    ]
    code = min(
        ((p, tokenizer.encode_chat(p.user)) for p in humaneval_prompts()), key=lambda c: len(c[1])
    )
    picked = [*chat[:n_chat], code]
    return [p for p, _ in picked], [ids for _, ids in picked]


def describe(name: str, checkpoint: Path) -> tuple[str, float]:
    """What a reference checkpoint learnt (one line) and the unigram perplexity, for scale,
    from the training.json it was exported with."""
    result = json.loads((checkpoint / "training.json").read_text())["result"]
    line = (
        f"{name} {result['params'] / 1e6:.2f}M parameters, {result['steps']} steps over "
        f"{result['tokens'] / 1e6:.1f}M tokens ({result['epochs']:.2f} epochs): held-out "
        f"perplexity {result['heldout_ppl']:.0f}"
    )
    return line, math.exp(result["unigram_entropy"])


def timed(target, ids, **kwargs):
    """The output of the last run and the tokens/s of REPEATS runs after a compiling one."""
    specdec.generate(target, ids, max_new_tokens=MAX_NEW_TOKENS, **kwargs)  # compile + warm up
    speeds = []
    for _ in range(REPEATS):
        out = specdec.generate(target, ids, max_new_tokens=MAX_NEW_TOKENS, **kwargs)
        speeds.append(out.stats.tokens_per_second)
    return out, speeds


def one_line(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    start = time.perf_counter()
    print(
        "loading the tiny reference pair (the first run trains it: about 2 minutes on a 2-core "
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
    target_line, unigram = describe("target:", target_dir)
    draft_line, _ = describe("draft: ", draft_dir)
    expectations = (
        f"(For scale: a unigram model scores {unigram:.0f}, the 101M `small` target trained on a "
        f"GPU {SMALL_TARGET_PPL}.) They have learnt the chat format and frequent words, not "
        "grammar or facts, so the answers are rough, and greedy decoding soon repeats itself "
        "(often blank lines). What the demo shows is the decoding: speculative greedy output "
        "equals plain greedy output token for token, and tau counts the tokens each target "
        "forward yields."
    )
    print(
        "\nWhat to expect: these are minute-long CPU runs, not models you would talk to.\n"
        f"  {target_line}\n  {draft_line}\n"
        + textwrap.fill(expectations, width=94, initial_indent="  ", subsequent_indent="  ")
    )

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
    outputs, speeds = {}, {}
    for label, kwargs in runs:
        outputs[label], speeds[label] = timed(target, ids, eos_token_id=eos, **kwargs)

    plain, sampled = outputs["plain greedy"], outputs["plain, temperature 1"]
    print("\nContinuations (each prompt sent as a user turn through the chat template):")
    for prompt, greedy_seq, sampled_seq in zip(
        prompts, plain.sequences(), sampled.sequences(), strict=True
    ):
        print(f"\n[{prompt.id}] {one_line(prompt.user)}")
        print(f"  greedy        -> {target.tokenizer.decode(greedy_seq)!r}")
        print(f"  temperature 1 -> {target.tokenizer.decode(sampled_seq)!r}")

    print(
        f"\n{len(ids)} prompts as one batch, up to {MAX_NEW_TOKENS} new tokens each; tok/s and "
        f"speedup are medians of {REPEATS} runs (min-max in brackets):"
    )
    for label, out in outputs.items():
        base = "plain, temperature 1" if "temperature" in label else "plain greedy"
        median = statistics.median(speeds[label])
        speedup = median / statistics.median(speeds[base])
        same = ""
        if "temperature" not in label and label != "plain greedy":
            same = (
                "  output == plain greedy"
                if (out.tokens == plain.tokens).all()
                else "  output differs from plain greedy (float ties?)"
            )
        print(
            f"  {label:44s} tau {out.stats.tau:4.2f}  {median:7.1f} tok/s "
            f"[{min(speeds[label]):.0f}-{max(speeds[label]):.0f}]  speedup {speedup:4.2f}x{same}"
        )
    print(
        "\ntau = tokens per target forward per sequence (bonus token included). With models "
        "this small\non a CPU, a forward costs about the same whatever the model's size, so the "
        "draft's forwards\ncost more than tau saves (speedup < 1). Speculative decoding pays "
        "where a target forward\ncosts many draft forwards: large targets on accelerators."
    )


if __name__ == "__main__":
    main()
