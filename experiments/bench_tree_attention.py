"""Tree-attention kernels against the hardware roofline, XLA and cuDNN (a GPU benchmark).

Layout: Llama-3-8B attention (32 query heads, 8 KV heads, head dim 128, bf16). Each problem is a
prefix + chain mask: the cache is filled to S - T (lengths = S - T) and the T block tokens form a
chain (causal region mask), so every query sees about S keys. Measured in the same run:

- ceilings: HBM bandwidth (a large elementwise copy, bytes read + written) and the bf16 matmul peak
  (an 8192^3 product);
- per problem: bytes = K/V of the S visible slots + q + output (each read or written once);
  FLOPs = 4 * B * N * T * S * H (QK^T and PV over every visible key; the masked half of the chain's
  own T x T corner is counted, which is under T / S of the total); roofline = max(bytes / BW,
  FLOPs / peak);
- per implementation: median device time (CUPTI kernel time summed over the call's kernels, so
  launch gaps are excluded; wall clock where CUPTI is missing), after warm-up, rotating through
  enough input sets to overflow the L2 cache.

Implementations: "mosaic_gpu" and "triton" (kernels_pallas), "xla" (the jnp reference with its dense
in-graph mask) and "cudnn" (jax.nn.dot_product_attention(implementation="cudnn") given the dense
[B, 1, T, S] bool mask, built outside the timed call as a model would share it across layers).

Usage on the GPU machine:
    PYTHONPATH=. python3 experiments/bench_tree_attention.py            # full table
    PYTHONPATH=. python3 experiments/bench_tree_attention.py --quick    # 8 problems
    ... --check    # correctness of the kernels on random trees / ragged lengths first
    ... --sweep    # block-size variants of each kernel on a few problems
The markdown table goes to stdout and, when $OUT is set, to $OUT/bench_tree_attention.md (+ .json).
"""

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import tree_attention_mosaic_gpu as mgpu
from kernels_pallas import tree_attention_triton as triton
from kernels_pallas import tree_common as tc
from kernels_pallas.reference import tree_attention_reference, visibility_mask
from kernels_pallas.testing import random_tree_mask

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B
DTYPE = jnp.bfloat16
BATCHES = (1, 4, 16)
BLOCKS = (1, 16, 64, 128)
SLOTS = (1024, 4096, 16384, 32768)
QUICK = [(b, t, s) for b in (1, 4) for t in (1, 64) for s in (4096, 32768)]
L2_BYTES = 50 * 2**20  # H100; inputs are rotated until a pass over them overflows this 3 times
TARGET_SECONDS = float(
    os.environ.get("BENCH_TARGET_SECONDS", 0.25)
)  # timed work per (implementation, problem)


# ----------------------------------------------------------------------------- timing

_LOG_FILE = None  # $OUT/bench_log.txt when $OUT is set: full tracebacks go there, not to stdout


def log_traceback():
    if _LOG_FILE is not None:
        traceback.print_exc(file=_LOG_FILE)
        _LOG_FILE.flush()


class Timer:
    """Median per-call device time of a jitted function, rotating over input sets."""

    def __init__(self):
        try:
            from jax._src.lib import mosaic_gpu as mosaic_gpu_lib

            self.ext = mosaic_gpu_lib._mosaic_gpu_ext
            self.ext._cupti_init()
            self.ext._cupti_get_timings(True)
            self.method = "cupti"
        except Exception:  # no Mosaic GPU runtime / CUPTI: fall back to wall clock
            self.ext = None
            self.method = "wall"

    def __call__(self, fn, arg_sets, *, min_reps=10, max_reps=400):
        for args in arg_sets:  # warm-up: compile and touch every input set
            jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        for i in range(3):
            out = fn(*arg_sets[i % len(arg_sets)])
        jax.block_until_ready(out)
        estimate = (time.perf_counter() - start) / 3
        reps = int(min(max(TARGET_SECONDS / max(estimate, 1e-6), min_reps), max_reps))
        if self.ext is not None:
            self.ext._cupti_init()
        start = time.perf_counter()
        for i in range(reps):
            out = fn(*arg_sets[i % len(arg_sets)])
        jax.block_until_ready(out)
        wall_ms = (time.perf_counter() - start) / reps * 1e3
        if self.ext is None:
            return {"ms": wall_ms, "wall_ms": wall_ms, "reps": reps, "spread": 0.0}
        timings = self.ext._cupti_get_timings(True)
        if not timings or len(timings) % reps:
            return {
                "ms": wall_ms,
                "wall_ms": wall_ms,
                "reps": reps,
                "spread": 0.0,
                "note": "cupti?",
            }
        per_call = len(timings) // reps
        sums = [sum(t for _, t in timings[i * per_call : (i + 1) * per_call]) for i in range(reps)]
        q10, q90 = np.percentile(sums, [10, 90])
        median = statistics.median(sums)
        # Median time of each of the call's kernels, to see what the helpers around a kernel cost.
        breakdown = [
            (name[:48], statistics.median(t for _, t in timings[j::per_call]))
            for j, (name, _) in enumerate(timings[:per_call])
        ]
        return {
            "ms": median,
            "wall_ms": wall_ms,
            "reps": reps,
            "kernels": per_call,
            "spread": float((q90 - q10) / median),
            "breakdown": breakdown,
        }


def measure_ceilings(timer):
    """HBM bytes/s (read + write of a 1 GiB elementwise op) and bf16 matmul FLOP/s (8192^3)."""
    n = 2**29  # bf16 elements = 1 GiB
    x = [jax.random.normal(jax.random.key(i), (n,), DTYPE) for i in range(2)]
    copy = jax.jit(lambda a: a * 2)
    bw = 2 * n * 2 / (timer(copy, [(a,) for a in x])["ms"] * 1e-3)
    del x
    m = 8192
    ab = [
        (
            jax.random.normal(jax.random.key(2 * i), (m, m), DTYPE),
            jax.random.normal(jax.random.key(2 * i + 1), (m, m), DTYPE),
        )
        for i in range(2)
    ]
    # The best of a bf16-out and an f32-out product, after a second of warm-up so clocks settle.
    matmuls = [
        jax.jit(lambda a, b: a @ b),
        jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)),
    ]
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        jax.block_until_ready(matmuls[0](*ab[0]))
    peak = max(2 * m**3 / (timer(f, ab)["ms"] * 1e-3) for f in matmuls)
    return bw, peak


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
    batch: int
    block: int
    slots: int

    @property
    def bytes(self) -> int:
        kv = 2 * self.batch * self.slots * NUM_KV_HEADS * HEAD_DIM
        qo = 2 * self.batch * self.block * NUM_HEADS * HEAD_DIM
        return (kv + qo) * jnp.dtype(DTYPE).itemsize

    @property
    def flops(self) -> int:
        return 4 * self.batch * NUM_HEADS * self.block * self.slots * HEAD_DIM


def chain_mask(batch, block):
    return jnp.broadcast_to(jnp.tril(jnp.ones((block, block), bool)), (batch, block, block))


def make_inputs(problem: Problem, seed: int):
    b, t, s = problem.batch, problem.block, problem.slots
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (b, t, NUM_HEADS, HEAD_DIM), DTYPE)
    k = jax.random.normal(kk, (b, s, NUM_KV_HEADS, HEAD_DIM), DTYPE)
    v = jax.random.normal(kv, (b, s, NUM_KV_HEADS, HEAD_DIM), DTYPE)
    lengths = jnp.full((b,), s - t, jnp.int32)
    return q, k, v, lengths, chain_mask(b, t)


def cudnn_attention(q, k, v, dense_mask):
    return jax.nn.dot_product_attention(q, k, v, mask=dense_mask, implementation="cudnn")


def implementations(variant=None):
    """name -> (jitted fn of (q, k, v, lengths, region_mask, dense_mask), kernel label)."""
    xla = jax.jit(lambda q, k, v, lens, reg, dense: tree_attention_reference(q, k, v, lens, reg))
    cudnn = jax.jit(lambda q, k, v, lens, reg, dense: cudnn_attention(q, k, v, dense))
    tri = jax.jit(
        lambda q, k, v, lens, reg, dense: triton.tree_attention_triton(q, k, v, lens, reg)
    )
    mg = jax.jit(
        lambda q, k, v, lens, reg, dense: mgpu.tree_attention_mosaic_gpu(q, k, v, lens, reg)
    )
    return {"mosaic_gpu": mg, "triton": tri, "xla": xla, "cudnn": cudnn}


def with_blocks(kernel, block_sizes):
    fn = functools.partial(kernel, block_sizes=block_sizes)
    return jax.jit(lambda q, k, v, lens, reg, dense: fn(q, k, v, lens, reg))


def reference_row0(inputs):
    """Float32 reference output of batch row 0 (the table's error column compares against it)."""
    q, k, v, lengths, region = (x[:1] for x in inputs[:5])
    with jax.default_matmul_precision("highest"):  # GPU float32 dots default to tf32
        return tree_attention_reference(
            *(x.astype(jnp.float32) for x in (q, k, v)), lengths, region
        )


def relative_error(out, ref):
    """||out - ref|| / ||ref|| on batch row 0."""
    diff = out[:1].astype(jnp.float32) - ref
    return float(jnp.linalg.norm(diff) / jnp.linalg.norm(ref))


def rotation_count(set_bytes: int, *, l2_bytes: int = L2_BYTES, max_sets: int = 8) -> int:
    """Input sets to rotate through so that one pass over them overflows L2 three times (at
    least 1, at most max_sets): the timed call then reads HBM, not what the last call cached."""
    return int(min(max_sets, max(1, math.ceil(3 * l2_bytes / max(set_bytes, 1)))))


def input_sets(problem):
    kv_bytes = 2 * problem.batch * problem.slots * NUM_KV_HEADS * HEAD_DIM * 2
    count = rotation_count(kv_bytes)
    sets = []
    for i in range(count):
        q, k, v, lengths, region = make_inputs(problem, seed=i)
        dense = visibility_mask(lengths, region, problem.slots)[:, None]  # [B, 1, T, S]
        sets.append((q, k, v, lengths, region, dense))
    return sets


def run_problem(problem, fns, timer, log):
    sets = input_sets(problem)
    row = {
        "B": problem.batch,
        "T": problem.block,
        "S": problem.slots,
        "bytes": problem.bytes,
        "flops": problem.flops,
        "times": {},
        "errors": {},
    }
    ref = None
    for name, fn in fns.items():
        try:
            out = jax.block_until_ready(fn(*sets[0]))
            err = None
            if name not in ("xla", "cudnn"):  # the baselines are not under test
                ref = reference_row0(sets[0]) if ref is None else ref
                err = relative_error(out, ref)
            del out
            row["times"][name] = timer(fn, sets)
            row["errors"][name] = err
            parts = row["times"][name].get("breakdown", [])
            log(
                f"  {name} B={problem.batch} T={problem.block} S={problem.slots} kernels: "
                + ", ".join(f"{n[:24]} {ms * 1e3:.1f}" for n, ms in parts)
            )
        except Exception as e:  # keep the table going; the log says why
            row["times"][name] = None
            row["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            log(
                f"  {name} B={problem.batch} T={problem.block} S={problem.slots}: "
                f"{row['errors'][name]}"
            )
            log_traceback()
    del sets
    return row


# ----------------------------------------------------------------------------- correctness


def check_kernels(log, kernels):
    """Kernels vs float32 reference on random trees, ragged lengths and NaN-filled cache tails."""
    rng = np.random.default_rng(0)
    cases = [  # (B, T, N, K, H, S, R, dtype, kernel, block_sizes or None)
        (3, 64, 32, 8, 128, 4096, 64, jnp.bfloat16, "mosaic_gpu", None),
        (3, 64, 32, 8, 128, 4096, 64, jnp.bfloat16, "mosaic_gpu", mgpu.BlockSizes(2, 128, 2, 5)),
        (2, 128, 32, 8, 128, 2048, 128, jnp.bfloat16, "mosaic_gpu", None),
        (4, 1, 32, 8, 128, 4096, 1, jnp.bfloat16, "mosaic_gpu", None),
        (3, 5, 32, 8, 128, 1024, 7, jnp.bfloat16, "mosaic_gpu", mgpu.BlockSizes(1, 128, 3, 3)),
        (2, 20, 32, 8, 128, 2048, 20, jnp.bfloat16, "mosaic_gpu", mgpu.BlockSizes(2, 128, 2, 2)),
        (2, 16, 16, 16, 64, 1024, 16, jnp.float16, "mosaic_gpu", mgpu.BlockSizes(1, 64, 2, 3)),
        (2, 16, 32, 4, 128, 1024, 48, jnp.bfloat16, "mosaic_gpu", mgpu.BlockSizes(2, 64, 3, 2)),
        (3, 64, 32, 8, 128, 4096, 64, jnp.bfloat16, "triton", None),
        (4, 1, 32, 8, 128, 4096, 1, jnp.bfloat16, "triton", None),
        (2, 16, 8, 8, 64, 1024, 16, jnp.float32, "triton", None),
        (3, 5, 32, 8, 128, 1024, 7, jnp.bfloat16, "triton", triton.BlockSizes(16, 64, 3)),
        (2, 128, 32, 4, 128, 2048, 128, jnp.bfloat16, "triton", triton.BlockSizes(64, 64, 3)),
    ]
    results = []
    for b, t, n, kh, h, s, r, dtype, kernel, bs in cases:
        if kernel not in kernels:
            continue
        keys = jax.random.split(jax.random.key(len(results)), 3)
        q = jax.random.normal(keys[0], (b, t, n, h), dtype)
        k = jax.random.normal(keys[1], (b, s, kh, h), dtype)
        v = jax.random.normal(keys[2], (b, s, kh, h), dtype)
        lengths = np.array([0, s - r, *rng.integers(1, s - r, size=b)][:b], np.int32)
        region = jnp.asarray(random_tree_mask(rng, b, t, r))
        lengths = jnp.asarray(lengths)
        with jax.default_matmul_precision("highest"):  # GPU float32 dots default to tf32
            ref = tree_attention_reference(
                *(x.astype(jnp.float32) for x in (q, k, v)), lengths, region
            )
        # Slots past lengths + R hold NaN: a kernel must never let them through.
        slot = jnp.arange(s)[None, :, None, None]
        tail = slot >= (lengths + r)[:, None, None, None]
        k_nan, v_nan = (
            jnp.where(tail, jnp.nan, k).astype(dtype),
            jnp.where(tail, jnp.nan, v).astype(dtype),
        )
        fn = {"mosaic_gpu": mgpu.tree_attention_mosaic_gpu, "triton": triton.tree_attention_triton}[
            kernel
        ]
        try:
            out = fn(q, k_nan, v_nan, lengths, region, block_sizes=bs).astype(jnp.float32)
            err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
            finite = bool(jnp.isfinite(out).all())
            ok = finite and err < (2e-2 if dtype != jnp.float32 else 1e-4)
            results.append(
                (kernel, (b, t, n, kh, h, s, r, jnp.dtype(dtype).name), bs, err, finite, ok)
            )
        except Exception as e:
            results.append(
                (
                    kernel,
                    (b, t, n, kh, h, s, r, jnp.dtype(dtype).name),
                    bs,
                    f"{type(e).__name__}: {str(e)[:300]}",
                    False,
                    False,
                )
            )
            log_traceback()
        log(f"check {results[-1]}")
    return results


# ----------------------------------------------------------------------------- sweep


def sweep_variants():
    variants = {}
    for wgs, bk, stages, per_sm in [
        (1, 128, 3, 1),
        (1, 128, 2, 1),
        (1, 64, 3, 2),
        (2, 128, 2, 1),
        (2, 128, 3, 1),
        (2, 64, 2, 2),
    ]:
        variants[f"mgpu w{wgs} k{bk} s{stages} c{per_sm}"] = ("mgpu", (wgs, bk, stages, per_sm))
    for bm, bk, warps, stages in [(64, 128, 4, 2), (64, 64, 4, 3)]:
        variants[f"triton m{bm} k{bk} w{warps} s{stages}"] = ("triton", (bm, bk, warps, stages))
    return variants


def variant_fn(kind, params, problem):
    shape = tc.TreeShape(
        problem.batch,
        problem.block,
        NUM_HEADS,
        HEAD_DIM,
        problem.slots,
        NUM_KV_HEADS,
        problem.block,
    )
    if kind == "mgpu":
        wgs, bk, stages, per_sm = params
        if shape.rows <= 64 and wgs == 2:
            return None
        row_tiles = -(-shape.rows // (64 * wgs))
        splits = tc.choose_num_splits(
            problem.batch * NUM_KV_HEADS * row_tiles, problem.slots, bk, num_cores=132 * per_sm
        )
        return with_blocks(mgpu.tree_attention_mosaic_gpu, mgpu.BlockSizes(wgs, bk, stages, splits))
    bm, bk, warps, stages = params
    bm = min(bm, max(16, 1 << (shape.rows - 1).bit_length()))
    row_tiles = -(-shape.rows // bm)
    splits = tc.choose_num_splits(
        problem.batch * NUM_KV_HEADS * row_tiles, problem.slots, bk, num_cores=264
    )
    return with_blocks(
        triton.tree_attention_triton, triton.BlockSizes(bm, bk, splits, warps, stages)
    )


# ----------------------------------------------------------------------------- report


def us(ms):
    return "n/a" if ms is None else f"{ms * 1e3:.1f}"


def table(rows, bw, peak, device, method):
    lines = [
        f"Device: {device}; measured ceilings: HBM {bw / 1e12:.2f} TB/s (read + write), "
        f"bf16 matmul {peak / 1e12:.0f} TFLOP/s; times: median {method} device time per call.",
        "",
        "| B | T | S | MB | GFLOP | roofline us | mosaic_gpu us | % RL | triton us | % RL "
        "| xla us | cudnn us | mgpu vs xla | mgpu vs cudnn | best vs xla | best vs cudnn | err |",
        "|" + "---|" * 17,
    ]
    for row in rows:
        roof = max(row["bytes"] / bw, row["flops"] / peak) * 1e3  # ms
        t = {k: (v["ms"] if v else None) for k, v in row["times"].items()}
        mg, tr, xla, cud = (t.get(k) for k in ("mosaic_gpu", "triton", "xla", "cudnn"))
        best = min((x for x in (mg, tr) if x is not None), default=None)
        pct = lambda x, roof=roof: "n/a" if x is None else f"{100 * roof / x:.0f}%"
        ratio = lambda a, b: "n/a" if a is None or b is None else f"{b / a:.2f}x"
        errs = row["errors"]
        err = max((e for e in errs.values() if isinstance(e, float)), default=float("nan"))
        lines.append(
            f"| {row['B']} | {row['T']} | {row['S']} | {row['bytes'] / 1e6:.1f} | "
            f"{row['flops'] / 1e9:.1f} | {roof * 1e3:.1f} | {us(mg)} | {pct(mg)} | {us(tr)} | "
            f"{pct(tr)} | {us(xla)} | {us(cud)} | {ratio(mg, xla)} | {ratio(mg, cud)} | "
            f"{ratio(best, xla)} | {ratio(best, cud)} | {err:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 problems instead of 48")
    parser.add_argument(
        "--check", default="", help="kernels to check first, e.g. mosaic_gpu,triton"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="block-size variants on a few problems"
    )
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    parser.add_argument(
        "--no-ceilings", action="store_true", help="skip the ceilings (checks only)"
    )
    parser.add_argument("--impls", default="mosaic_gpu,triton,xla,cudnn")
    parser.add_argument(
        "--batches", default=",".join(map(str, BATCHES)), help="B values of the table"
    )
    parser.add_argument(
        "--ceilings", default="", help="'bytes_per_s,flops_per_s' instead of measuring"
    )
    args = parser.parse_args(argv)
    global _LOG_FILE
    out_dir = os.environ.get("OUT")
    # Open for the whole run (closed at exit): every stage appends to it as it goes.
    _LOG_FILE = open(os.path.join(out_dir, "bench_log.txt"), "a") if out_dir else None  # noqa: SIM115

    def log(msg):
        print(msg, flush=True)
        if _LOG_FILE:
            _LOG_FILE.write(msg + "\n")
            _LOG_FILE.flush()

    device = jax.devices()[0]
    device_name = f"{device.device_kind} (jax {jax.__version__})"
    log(f"device: {device_name}, backend {jax.default_backend()}")
    timer = Timer()
    report = {"device": device_name, "timer": timer.method}

    if args.check:
        results = check_kernels(log, args.check.split(","))
        report["check"] = [list(map(str, r)) for r in results]
        log(f"check: {sum(r[-1] for r in results)}/{len(results)} passed")

    if args.no_ceilings:
        return
    if args.ceilings:
        bw, peak = map(float, args.ceilings.split(","))
    else:
        bw, peak = measure_ceilings(timer)
    report.update(hbm_bytes_per_s=bw, bf16_flops_per_s=peak)
    log(
        f"ceilings: HBM {bw / 1e12:.2f} TB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s "
        f"({timer.method})"
    )

    if args.sweep:
        sweep_rows = []
        problems = [
            Problem(1, 1, 32768),
            Problem(4, 1, 4096),
            Problem(4, 16, 16384),
            Problem(4, 64, 32768),
            Problem(1, 128, 16384),
            Problem(16, 128, 4096),
        ]
        for problem in problems:
            fns = {}
            for name, (kind, params) in sweep_variants().items():
                fn = variant_fn(kind, params, problem)
                if fn is not None:
                    fns[name] = fn
            row = run_problem(problem, fns, timer, log)
            roof = max(problem.bytes / bw, problem.flops / peak) * 1e3
            for name, res in row["times"].items():
                if res:
                    log(
                        f"sweep B={problem.batch} T={problem.block} S={problem.slots} {name:28s} "
                        f"{res['ms'] * 1e3:8.1f} us  {100 * roof / res['ms']:5.1f}% RL  "
                        f"err {row['errors'][name]}"
                    )
            sweep_rows.append(row)
        report["sweep"] = sweep_rows

    if not args.no_table:
        batches = tuple(int(b) for b in args.batches.split(","))
        problems = QUICK if args.quick else list(itertools.product(batches, BLOCKS, SLOTS))
        fns = {k: v for k, v in implementations().items() if k in args.impls.split(",")}
        rows = []
        for b, t, s in problems:
            rows.append(run_problem(Problem(b, t, s), fns, timer, log))
            log(table(rows[-1:], bw, peak, device_name, timer.method).splitlines()[-1])
            if out_dir:  # keep what is done if the run is cut short
                with open(os.path.join(out_dir, "bench_tree_attention.json"), "w") as f:
                    json.dump(
                        {**report, "table": rows, "hbm_bytes_per_s": bw, "bf16_flops_per_s": peak},
                        f,
                        indent=1,
                        default=str,
                    )
        markdown = table(rows, bw, peak, device_name, timer.method)
        command = "PYTHONPATH=. python3 experiments/bench_tree_attention.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        markdown = f"Command: `{command.strip()}`\n\n{markdown}\n"
        print("\n" + markdown)
        report["table"] = rows
        if out_dir:
            with open(os.path.join(out_dir, "bench_tree_attention.md"), "w") as f:
                f.write(markdown)
    if out_dir:
        with open(os.path.join(out_dir, "bench_tree_attention.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
