"""Skinny matmuls x [M, K] @ w [K, N] (decode-time projections, bf16): the Triton kernel
(kernels_pallas/matvec_triton.py), a pruned sweep of its tilings, against XLA's dot (GPU).

    # on the GPU machine (< 150 s):
    PYTHONPATH=. python3 experiments/bench_matvec.py --out $OUT
    # the same code path on a CPU, in interpret mode (a few seconds; timings mean nothing)
    PYTHONPATH=. .venv/bin/python experiments/bench_matvec.py --smoke --out /tmp/bm

Problems: the Llama-3-8B and `small` (100M) projections (qkv, o, gate_up, down; `small`'s LM
head) at M in {1, 8}, plus M in {5, 16} for the 8B qkv. Per problem, all timed with CUPTI device
time summed over the call's kernels (bench_tree_attention.Timer; wall clock where CUPTI is
missing), inputs rotated so that each call reads w from HBM, not L2:
  xla      jnp.dot(x, w, preferred_element_type=float32), as XLA compiles it (autotuned GEMM)
  default  the kernel with matvec_triton.default_blocks
  sweep    stage 1: every (block_n, block_k, splits) that tiles the shape with >= 1 and <= 8
           programs per SM (or the most programs any tiling gives) and fits registers / shared
           memory, at 4 warps and 4 stages, for each accumulation (tensor-core dot; broadcast
           product for M_pad <= 8; deferred reduction for M_pad <= 2); stage 2: the best
           STAGE2_TOP of stage 1 at warps {4, 8} x stages {3, 4, 5}. Each config's output is checked
           against XLA's (relative error); wrong ones are not ranked.
Configs of a stage are compiled in parallel threads, then timed one by one. Bytes per call:
K*N*2 + M*K*2 + M*N*4; TB/s = bytes / time. Results go to --out as bench_matvec.json and
bench_matvec.md after every problem (a timeout keeps what was measured); --deadline-s stops
the sweep (remaining problems are listed as skipped). The last output is a TUNED_BLOCKS table
(best config per problem) to paste into matvec_triton.py.
"""

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.bench_tree_attention import L2_BYTES, Timer
from experiments.ceilings import H200_BYTES_PER_S
from kernels_pallas import matvec_triton as mv
from kernels_pallas.matvec_triton import MatvecBlocks

# (K, N) per projection, bf16 weights.
SHAPES = {
    "8b_qkv": (4096, 6144),
    "8b_o": (4096, 4096),
    "8b_gate_up": (4096, 28672),
    "8b_down": (14336, 4096),
    "small_qkv": (768, 2304),
    "small_o": (768, 768),
    "small_gate_up": (768, 4096),
    "small_down": (2048, 768),
    "small_head": (768, 16384),
}
PROBLEMS = [(name, m) for name in SHAPES for m in (1, 8)] + [("8b_qkv", 5), ("8b_qkv", 16)]
SMOKE_SHAPES = {"tiny_a": (256, 128), "tiny_b": (512, 256)}
SMOKE_PROBLEMS = [("tiny_a", 1), ("tiny_b", 5)]

BLOCK_N = (32, 64, 128, 256)
BLOCK_K = (64, 128, 256, 512)
SPLITS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
WARPS = (4, 8)
STAGES = (3, 4, 5)
STAGE2_TOP = 3  # stage-1 configs refined over warps x stages
# Pruning: registers of the broadcast product per step (f32 elements; 32k = 256 a thread at 4
# warps), of the deferred accumulator, and shared memory of the pipelined w tiles (4 stages).
MAX_BCAST_ELEMENTS = 32768
MAX_DEFERRED_ELEMENTS = 16384
MAX_SMEM_BYTES = 200 * 1024
MAX_REPS = 100  # per config: enough for a median of a ~10-100 us kernel
MAX_ERROR = 1e-2  # relative L2 error against XLA above which a config is wrong (bf16 out-of-order)
COMPILE_THREADS = min(16, os.cpu_count() or 1)
DTYPE = jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    m: int
    k: int
    n: int

    @property
    def bytes(self) -> int:
        return self.k * self.n * 2 + self.m * self.k * 2 + self.m * self.n * 4


def input_sets(p: Problem, *, max_sets: int) -> list[tuple[jax.Array, jax.Array]]:
    """(x, w) sets to rotate through so that one pass overflows L2 three times."""
    count = int(min(max_sets, max(1, math.ceil(3 * L2_BYTES / (p.k * p.n * 2)))))
    sets = []
    for i in range(count):
        kx, kw = jax.random.split(jax.random.key(i))
        x = jax.random.normal(kx, (p.m, p.k), DTYPE)  # [M, K]
        w = jax.random.normal(kw, (p.k, p.n), DTYPE)  # [K, N]
        sets.append((x, w))
    return sets


def stage1_blocks(p: Problem, num_cores: int) -> list[MatvecBlocks]:
    """(block_n, block_k, splits) x accumulation at 4 warps / 4 stages, pruned (module doc)."""
    tilings = [
        (bn, bk, s)
        for bn in BLOCK_N
        for bk in BLOCK_K
        for s in SPLITS
        if p.n % bn == 0 and p.k % (bk * s) == 0
    ]
    if not tilings:
        return []
    most = max((p.n // bn) * s for bn, _, s in tilings)
    low, high = min(num_cores, most), 8 * num_cores
    out = []
    for bn, bk, s in tilings:
        if not low <= (p.n // bn) * s <= high or bk * bn * 2 * 4 > MAX_SMEM_BYTES:
            continue
        out.append(MatvecBlocks(bn, bk, s, use_dot=True))
        rows = mv.padded_rows(p.m, use_dot=False)
        if rows <= 8 and rows * bk * bn <= MAX_BCAST_ELEMENTS:
            out.append(MatvecBlocks(bn, bk, s, use_dot=False))
        if rows <= 2 and rows * bk * bn <= MAX_DEFERRED_ELEMENTS:
            out.append(MatvecBlocks(bn, bk, s, use_dot=False, defer_reduce=True))
    return out


def stage2_blocks(top: list[MatvecBlocks], done: set[MatvecBlocks]) -> list[MatvecBlocks]:
    out = []
    for bs in top:
        for warps in WARPS:
            for stages in STAGES:
                new = dataclasses.replace(bs, num_warps=warps, num_stages=stages)
                smem = bs.block_k * bs.block_n * 2 * stages
                if new not in done and new not in out and smem <= MAX_SMEM_BYTES:
                    out.append(new)
    return out


def compile_all(fns: dict, example) -> dict:
    """name -> compiled executable (or the exception), compiled in parallel threads."""

    def build(fn):
        return jax.jit(fn).lower(*example).compile()

    with concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS) as pool:
        futures = {name: pool.submit(build, fn) for name, fn in fns.items()}
        out = {}
        for name, future in futures.items():
            try:
                out[name] = future.result()
            except Exception as e:  # a config Triton cannot compile (registers, shared memory)
                out[name] = e
        return out


def describe(bs: MatvecBlocks) -> str:
    acc = "dot" if bs.use_dot else ("defer" if bs.defer_reduce else "bcast")
    return f"n{bs.block_n} k{bs.block_k} s{bs.splits} w{bs.num_warps} st{bs.num_stages} {acc}"


def relative_error(out, ref) -> float:
    return float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))


class Bench:
    """One run: problems measured in order, results rewritten to --out after each."""

    def __init__(self, args, log):
        self.args, self.log = args, log
        self.smoke = args.smoke
        self.timer = Timer()
        device = jax.devices()[0]
        self.num_cores = 4 if self.smoke else mv.num_cores()
        self.report = {
            "device": f"{device.device_kind} (jax {jax.__version__})",
            "num_cores": self.num_cores,
            "timer": self.timer.method,
            "interpret": self.smoke,
            "command": " ".join(sys.argv),
            "problems": [],
        }
        self.out = Path(args.out) if args.out else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)

    def time(self, fn, sets) -> dict:
        return self.timer(fn, sets, min_reps=3 if self.smoke else 10, max_reps=MAX_REPS)

    def kernel_fn(self, bs: MatvecBlocks | None):
        return functools.partial(mv.skinny_matmul, block_sizes=bs, interpret=self.smoke)

    def measure(self, configs: dict, sets, ref) -> dict:
        """name -> {"blocks", "us", "err"} or {"blocks", "error"}; configs: name -> blocks."""
        compiled = compile_all({name: self.kernel_fn(bs) for name, bs in configs.items()}, sets[0])
        results = {}
        for name, exe in compiled.items():
            bs = configs[name]
            row = {"blocks": dataclasses.asdict(bs) if bs else None}
            try:
                if isinstance(exe, Exception):
                    raise exe
                row["err"] = relative_error(exe(*sets[0]), ref)
                timing = self.time(exe, sets)
                row["us"] = timing["ms"] * 1e3
                row["kernels"] = timing.get("kernels")
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                self.log(f"  {name}: {row['error']}")
                if self.args.verbose:
                    traceback.print_exc()
            results[name] = row
        return results

    def run_problem(self, p: Problem, deadline: float) -> dict:
        sets = input_sets(p, max_sets=2 if self.smoke else 64)
        row = {"shape": p.name, "M": p.m, "K": p.k, "N": p.n, "bytes": p.bytes}
        xla = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
        ref = xla(*sets[0])
        xla_time = self.time(xla, sets)
        row["xla"] = {"us": xla_time["ms"] * 1e3, "breakdown": xla_time.get("breakdown")}
        default = mv.default_blocks(p.m, p.k, p.n, num_cores=self.num_cores)
        row["default"] = self.measure({"default": default}, sets, ref)["default"]

        configs = {describe(bs): bs for bs in stage1_blocks(p, self.num_cores)}
        if self.smoke:
            configs = dict(list(configs.items())[:3])
        sweep = self.measure(configs, sets, ref)
        ranked = self.ranked(sweep)
        if time.perf_counter() < deadline:
            done = set(configs.values())
            top = [configs[name] for name, _ in ranked[:STAGE2_TOP]]
            refine = {describe(bs): bs for bs in stage2_blocks(top, done)}
            if self.smoke:
                refine = dict(list(refine.items())[:2])
            sweep.update(self.measure(refine, sets, ref))
            configs.update(refine)
        else:
            row["note"] = "stage 2 skipped (deadline)"
        ranked = self.ranked(sweep)
        row["sweep"] = sweep
        if ranked:
            name, best = ranked[0]
            row["best"] = {"name": name, **best}
            # The best config again, for its per-kernel breakdown (pallas call + split sum).
            exe = jax.jit(self.kernel_fn(configs[name])).lower(*sets[0]).compile()
            row["best"]["breakdown"] = self.time(exe, sets).get("breakdown")
        return row

    @staticmethod
    def ranked(sweep: dict) -> list:
        ok = [(n, r) for n, r in sweep.items() if "us" in r and r["err"] < MAX_ERROR]
        return sorted(ok, key=lambda item: item[1]["us"])

    def run(self):
        started = time.perf_counter()
        deadline = started + self.args.deadline_s
        problems = SMOKE_PROBLEMS if self.smoke else PROBLEMS
        shapes = SMOKE_SHAPES if self.smoke else SHAPES
        if self.args.shapes:
            problems = [(s, m) for s, m in problems if s in self.args.shapes.split(",")]
        if self.args.rows:  # every selected shape at exactly these row counts
            names = dict.fromkeys(s for s, _ in problems)
            problems = [(s, int(m)) for s in names for m in self.args.rows.split(",")]
        self.log(
            f"device {self.report['device']}, {self.num_cores} cores, timer {self.timer.method}"
        )
        for name, m in problems:
            p = Problem(name, m, *shapes[name])
            if time.perf_counter() > deadline:
                self.report["problems"].append({"shape": name, "M": m, "skipped": "deadline"})
                self.log(f"{name} M={m}: skipped (deadline)")
                continue
            t0 = time.perf_counter()
            try:
                row = self.run_problem(p, deadline)
            except Exception as e:
                row = {"shape": name, "M": m, "error": f"{type(e).__name__}: {e}"[:300]}
                traceback.print_exc()
            row["seconds"] = time.perf_counter() - t0
            self.report["problems"].append(row)
            self.log(
                table_row(row) + f"  ({row['seconds']:.1f}s, {len(row.get('sweep', {}))} cfgs)"
            )
            self.write()
        self.write()
        markdown = self.markdown()
        print("\n" + markdown)

    def markdown(self) -> str:
        lines = [
            f"Device: {self.report['device']}; times: median {self.timer.method} device time per "
            f"call (us); TB/s = (K*N*2 + M*K*2 + M*N*4) / time; H200 ceiling "
            f"{H200_BYTES_PER_S / 1e12:.2f} TB/s (experiments/ceilings.py).",
            f"Command: `{self.report['command']}`",
            "",
            "| shape | M | K | N | MB | XLA us | XLA TB/s | best us | best TB/s | vs XLA "
            "| best config | default us | default config |",
            "|" + "---|" * 13,
        ]
        lines += [table_row(row) for row in self.report["problems"]]
        return "\n".join(lines) + "\n\n" + tuned_table(self.report["problems"]) + "\n"

    def write(self):
        if not self.out:
            return
        (self.out / "bench_matvec.json").write_text(json.dumps(self.report, indent=1, default=str))
        (self.out / "bench_matvec.md").write_text(self.markdown())


def table_row(row: dict) -> str:
    head = f"| {row['shape']} | {row['M']} | "
    if "skipped" in row or "error" in row:
        return head + f"{row.get('skipped') or row.get('error')} |"
    tbs = lambda us: f"{row['bytes'] / (us * 1e-6) / 1e12:.2f}"
    xla, best, default = row["xla"]["us"], row.get("best"), row["default"]
    best_cols = (
        f"{best['us']:.1f} | {tbs(best['us'])} | {xla / best['us']:.2f}x | {best['name']}"
        if best
        else "n/a | n/a | n/a | n/a"
    )
    default_us = f"{default['us']:.1f}" if "us" in default else default.get("error", "n/a")
    default_cfg = describe(MatvecBlocks(**default["blocks"]))
    return (
        head + f"{row['K']} | {row['N']} | {row['bytes'] / 1e6:.1f} | {xla:.1f} | {tbs(xla)} | "
        f"{best_cols} | {default_us} | {default_cfg} |"
    )


def tuned_table(rows: list) -> str:
    """The best config per problem as matvec_triton.TUNED_BLOCKS entries."""
    lines = ["TUNED_BLOCKS = {  # (M, K, N): best of experiments/bench_matvec.py"]
    for row in rows:
        if row.get("best"):
            bs = MatvecBlocks(**row["best"]["blocks"])
            lines.append(f"    ({row['M']}, {row['K']}, {row['N']}): {bs!r},")
    return "\n".join([*lines, "}"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for bench_matvec.json / .md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, interpret mode, CPU")
    parser.add_argument("--deadline-s", type=float, default=140.0, help="stop sweeping after")
    parser.add_argument("--shapes", default="", help="comma-separated subset of the shapes")
    parser.add_argument(
        "--rows", default="", help="comma-separated M values instead of each shape's defaults"
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks of failed configs")
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, flush=True)
    if not args.smoke and jax.default_backend() != "gpu":
        log(f"warning: backend {jax.default_backend()!r}; the kernel needs a GPU (or --smoke)")
    Bench(args, log).run()


if __name__ == "__main__":
    main()
