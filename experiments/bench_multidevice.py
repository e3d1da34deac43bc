"""Multi-device decode benchmark: tensor parallel (TP=2) against one device, plain and speculative.

    PYTHONPATH=. python experiments/bench_multidevice.py --out results/multidevice   # 2 GPUs
    PYTHONPATH=. python experiments/bench_multidevice.py --smoke --out /tmp/md       # CPU, 1 min

The target is the random Llama-3-8B shape in bfloat16 (as experiments/bench_decode.py builds it),
once on one device and once sharded over a 1 x TP mesh (`Model.random(..., mesh=mesh)`: weights
initialised directly sharded). For each batch size (default 1 and 16) and each way of decoding
(plain greedy; DraftModel with a random 4-layer 1.2B drafter sharded the same way, Chain(4)) it
measures tokens/s and the time per target forward, on one device and on the mesh, and reports
the speedup and the scaling efficiency (speedup / TP).

Per-forward time is isolated as in bench_decode: two runs of one compiled loop (N and N/2 + 1
new tokens) and the time difference over the forward difference, so prefill and launch costs
cancel. The all-reduce share of a step is measured two ways:
  * timed: the Megatron layout all-reduces the [B, T, D] residual stream twice per layer, so a
    step carries 2 L all-reduces of B x T x D; their cost is timed alone (a jitted chain of that
    many psums of that size under shard_map) and divided by the TP step time; the compiled
    decode loop's all-reduce count is reported next to the analytic one;
  * profiled: a jax.profiler trace of the TP run; the device time of every event whose name
    says all-reduce (NCCL kernels on GPU) over the traced wall time (best effort: null when the
    trace has no such events or cannot be read).
Results go to --out as they come (bench_multidevice.json and .md, rewritten after every row), so
a run stopped by its time limit keeps what it measured; --deadline-s skips what would not fit.
"""

import argparse
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

if "--smoke" in sys.argv and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
):  # the smoke run needs several CPU devices, fixed when jax starts
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import specdec
from drafters import DraftModel
from specdec import sharding
from specdec.config import llama3_8b_config, tiny_config
from trees import Chain

ALL_REDUCE = re.compile(r"all-?reduce|allreduce", re.IGNORECASE)


@dataclasses.dataclass
class Report:
    """Everything measured so far; written to --out after each addition."""

    out: str | None
    meta: dict
    rows: list = dataclasses.field(default_factory=list)
    collectives: dict = dataclasses.field(default_factory=dict)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()

    def write(self) -> None:
        if not self.out:
            return
        os.makedirs(self.out, exist_ok=True)
        blob = {"meta": self.meta, "rows": self.rows, "collectives": self.collectives}
        with open(os.path.join(self.out, "bench_multidevice.json"), "w") as f:
            json.dump(blob, f, indent=2)
        with open(os.path.join(self.out, "bench_multidevice.md"), "w") as f:
            f.write(self.markdown())

    def markdown(self) -> str:
        m = self.meta
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        lines = [
            f"# TP={m['tp']} vs one device: {m['target']}",
            "",
            f"device {m['device']} x {m['devices']}; jax {m['jax']}; dtype {m['dtype']}; "
            f"prompt {m['prompt_len']} tokens, {m['max_new']} new; command `{m['command']}`",
            "",
            "| B | decoding | devices | tau | ms/forward | decode tok/s | end-to-end tok/s | "
            "speedup | scaling efficiency |",
            "|" + "---|" * 9,
        ]
        for r in self.rows:
            lines.append(
                f"| {r['batch']} | {r['method']} | {r['devices']} | {r['tau']:.2f} | "
                f"{r['step_ms']:.2f} | {r['decode_tok_s']:.1f} | {r['end_to_end_tok_s']:.1f} | "
                f"{fmt(r.get('speedup'), '.2f')} | {fmt(r.get('efficiency'), '.0%')} |"
            )
        if self.collectives:
            lines += ["", "## All-reduce share of a TP step", ""]
            lines += [
                "| B | decoding | target all-reduces/step | one all-reduce (us) | share (timed) | "
            ]
            lines[-1] += "share (profiled) | compiled all-reduce ops |"
            lines += ["|" + "---|" * 7]
            for key, c in self.collectives.items():
                batch, method = key.split("/")
                lines.append(
                    f"| {batch} | {method} | {c['per_step']} | {c['one_us']:.1f} | "
                    f"{fmt(c['share_timed'], '.1%')} | {fmt(c.get('share_profiled'), '.1%')} | "
                    f"{fmt(c.get('compiled_all_reduces'), 'd')} |"
                )
        if m.get("skipped"):
            lines += ["", f"skipped for the deadline: {', '.join(m['skipped'])}"]
        return "\n".join(lines) + "\n"


def draft_config(target_cfg, smoke: bool):
    """bench_decode's random drafter: 4 layers, D 2048 (1.2B with Llama-3's vocabulary)."""
    if smoke:
        return dataclasses.replace(target_cfg, num_layers=1)
    return dataclasses.replace(
        target_cfg,
        num_layers=4,
        hidden_size=2048,
        intermediate_size=5632,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
    )


def timed(model, prompts, max_new, **kwargs):
    """(seconds per target forward, the full run's output) from two runs of one compiled loop."""
    half = max_new // 2 + 1
    specdec.generate(model, prompts, max_new_tokens=max_new, **kwargs)  # compile + warm up
    full = specdec.generate(model, prompts, max_new_tokens=max_new, **kwargs)
    short = specdec.generate(model, prompts, max_new_tokens=half, **kwargs)
    steps = full.stats.target_forwards - short.stats.target_forwards
    per_step = (full.stats.wall_seconds - short.stats.wall_seconds) / max(steps, 1)
    if per_step <= 0:  # timing noise on tiny models: fall back to the whole run
        per_step = full.stats.wall_seconds / max(full.stats.target_forwards, 1)
    return per_step, full


def all_reduce_seconds(mesh, shape: tuple[int, ...], dtype, count: int, reps: int = 10) -> float:
    """Seconds of one all-reduce over the "model" axis of an array of `shape` per device, timed
    as a jitted chain of `count` dependent psums (unrolled) under shard_map."""
    n = mesh.shape["model"]

    def chain(x):  # x [1, *shape] per device
        for _ in range(count):
            x = jax.lax.psum(x, "model") * (1.0 / n)  # keeps the values bounded
        return x

    spec = P("model")
    fn = jax.jit(jax.shard_map(chain, mesh=mesh, in_specs=spec, out_specs=spec))
    x = jax.device_put(jnp.ones((n, *shape), dtype), NamedSharding(mesh, spec))
    fn(x).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / count


def compiled_all_reduces() -> int | None:
    """All-reduce ops in the most recently used compiled decode loop (prefill and step bodies
    together; generate keeps its compiled loops least recently used first), or None."""
    from specdec.engine import generate as engine

    try:
        compiled = next(reversed(engine._LOOPS._loops.values()))
        return len(re.findall(r"= \S+ all-reduce(?:-start)?\(", compiled.as_text()))
    except Exception as err:  # diagnostics only
        print(f"could not count compiled all-reduces: {err}", flush=True)
        return None


def profiled_share(run, devices: int) -> float | None:
    """Device time in all-reduce events / traced wall time, from a jax.profiler trace of `run`."""
    directory = tempfile.mkdtemp(prefix="md-trace-")
    try:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
        files = glob.glob(os.path.join(directory, "**", "*.json.gz"), recursive=True)
        if not files:
            return None
        with gzip.open(files[0], "rt") as f:
            trace = json.load(f)
        events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
        events = [e for e in events if isinstance(e, dict)]
        names = {
            e.get("pid"): str(e.get("args", {}).get("name", ""))
            for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"
        }
        # Device timelines where the trace has them (GPU / TPU); else everything (XLA:CPU).
        on_device = {pid for pid, name in names.items() if "/device:" in name}
        busy_us = sum(
            float(e.get("dur", 0))
            for e in events
            if e.get("ph") == "X"
            and ALL_REDUCE.search(str(e.get("name")))
            and (not on_device or e.get("pid") in on_device)
        )
        per_device = len(on_device) or devices
        return busy_us * 1e-6 / per_device / wall if busy_us else None
    except Exception as err:  # a profiler problem must not lose the timings
        print(f"profile not read: {err}", flush=True)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny float32 model on 8 CPU devices")
    parser.add_argument("--tp", type=int, default=2, help="model-axis size of the mesh (2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-len", type=int, default=None, help="(128; smoke 8)")
    parser.add_argument("--max-new", type=int, default=None, help="(128; smoke 8)")
    parser.add_argument("--attention", default="xla", help="xla / auto (Pallas, run per shard)")
    parser.add_argument("--no-spec", action="store_true", help="plain decoding only")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler trace")
    parser.add_argument(
        "--deadline-s", type=float, default=420.0, help="skip rows that would start after this"
    )
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    start = time.perf_counter()
    prompt_len = args.prompt_len or (8 if args.smoke else 128)
    max_new = args.max_new or (8 if args.smoke else 128)

    devices = jax.devices()
    mesh = sharding.make_mesh(1, args.tp)  # raises when fewer than TP devices exist
    if args.smoke:
        cfg = tiny_config(vocab_size=512, num_heads=4, num_kv_heads=2)
        dtype = jnp.float32
    else:
        cfg, dtype = llama3_8b_config(), jnp.bfloat16
    report = Report(
        out=args.out,
        meta=dict(
            tp=args.tp,
            target=f"random {'tiny' if args.smoke else 'Llama-3-8B'} shape",
            device=devices[0].device_kind,
            devices=len(devices),
            jax=jax.__version__,
            dtype=jnp.dtype(dtype).name,
            prompt_len=prompt_len,
            max_new=max_new,
            command=" ".join(["python", *sys.argv]),
            skipped=[],
        ),
    )
    report.write()

    built = time.perf_counter()

    def build(what, config, seed, mesh=None):
        model = specdec.Model.random(
            config, seed=seed, dtype=dtype, attention=args.attention, mesh=mesh
        )
        jax.block_until_ready(model.net)
        print(f"[{time.perf_counter() - start:6.1f}s] built {what}", flush=True)
        return model

    one = build("target, one device", cfg, 0)
    tp = build(f"target, TP={args.tp}", cfg, 0, mesh)
    draft_cfg = draft_config(cfg, args.smoke)
    draft_one = build("draft, one device", draft_cfg, 1)
    draft_tp = build(f"draft, TP={args.tp}", draft_cfg, 1, mesh)
    report.meta["build_s"] = round(time.perf_counter() - built, 1)
    print(f"{one}\n{tp}\nbuilt in {report.meta['build_s']}s", flush=True)

    methods = [("plain", {}, {})]
    if not args.no_spec:
        methods.append(
            (
                "DraftModel+Chain(4)",
                dict(drafter=DraftModel(draft_one), policy=Chain(4)),
                dict(drafter=DraftModel(draft_tp), policy=Chain(4)),
            )
        )
    rng = np.random.default_rng(0)
    last_row_s = 0.0
    for batch in args.batch:
        prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
        for method, kw_one, kw_tp in methods:
            label = f"B={batch} {method}"
            elapsed = time.perf_counter() - start
            if elapsed + last_row_s > args.deadline_s:  # the next row would likely not fit
                report.meta["skipped"].append(label)
                report.write()
                continue
            row_start = time.perf_counter()
            base = base_tokens = None
            for devices_used, model, kw in ((1, one, kw_one), (args.tp, tp, kw_tp)):
                step, out = timed(model, prompts, max_new, **kw)
                row = dict(
                    batch=batch,
                    method=method,
                    devices=devices_used,
                    tau=out.stats.tau,
                    step_ms=step * 1e3,
                    decode_tok_s=batch * out.stats.tau / step,
                    end_to_end_tok_s=out.stats.tokens_per_second,
                    at_s=round(time.perf_counter() - start, 1),  # progress: seconds into the run
                )
                if base is None:
                    base, base_tokens = row, out.tokens
                else:
                    row["speedup"] = row["end_to_end_tok_s"] / base["end_to_end_tok_s"]
                    row["efficiency"] = row["speedup"] / args.tp
                    # bf16: TP changes the reduction order, so near-ties may flip
                    row["agreement_with_one_device"] = float(np.mean(out.tokens == base_tokens))
                report.add(row)
            # The all-reduce share of this TP step.
            tree = kw_tp["policy"].max_nodes if kw_tp else 1
            per_step = 2 * cfg.num_layers
            one_s = all_reduce_seconds(mesh, (batch, tree, cfg.hidden_size), dtype, per_step)
            entry = dict(
                per_step=per_step,
                one_us=one_s * 1e6,
                share_timed=per_step * one_s / (row["step_ms"] * 1e-3),
                target_step_ms=row["step_ms"],
                compiled_all_reduces=compiled_all_reduces(),
            )
            if not args.no_profile:
                run = lambda kw=kw_tp, p=prompts: specdec.generate(
                    tp, p, max_new_tokens=max_new, **kw
                )
                entry["share_profiled"] = profiled_share(run, args.tp)
            report.collectives[f"{batch}/{method}"] = entry
            print(json.dumps({"collectives": f"{batch}/{method}", **entry}), flush=True)
            report.write()
            last_row_s = time.perf_counter() - row_start
    report.meta["wall_s"] = round(time.perf_counter() - start, 1)
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main()
