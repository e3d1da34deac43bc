"""Every ratio of issue 14 next to its target, measured in one run (one 10-minute GPU call).

    # on the GPU machine (jax with CUDA; torch + transformers for the HF peers):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 experiments/bench_all.py --out $OUT
    # the same code on a CPU with tiny shapes, float32 (the HF sections run on torch's CPU
    # device when torch and transformers import, else they are skipped):
    PYTHONPATH=. .venv/bin/python experiments/bench_all.py --smoke --out /tmp/bench_all

Sections run in the priority order of SECTIONS, each under its own time budget inside one
deadline (--deadline-s, default 530 s; 565 s fits a 10-minute call), each writing
$OUT/bench_all.md and bench_all.json as it ends, so a run cut short keeps what it did. The
sections that judge a target come first (run 10: about 540 s in all); the information sections
after them get the time left. Sections the deadline skipped run in a second call, e.g.
`--sections small_step,speculation,spec_extra` (eagle_8b, eagle_8b_aligned and hf_8b need
plain_8b; hf_8b_lookup needs hf_8b; speculation, small_step_extra and eagle_small need small_step;
hf_small and spec_extra need speculation, in the same call; the ceilings always run first unless
--bandwidth gives them).

Targets:
  ceilings     HBM bandwidth by several methods (torch CUDA events: device-to-device copy and a
               bf16 GEMV; jax: an elementwise copy and a bf16 GEMV, best-of-N wall clock with
               block_until_ready and CUPTI device time), and the bf16 matmul peak. The best
               bandwidth is the ceiling every roofline below uses.
  plain_8b     plain greedy decoding of the random Llama-3-8B shape (bf16, prompt 128, 256 new)
               at batch 1 and 8: ms/step, effective bandwidth, % of the ceiling. Targets >= 85%
               and <= 4.45 ms at batch 1.
  eagle_8b     an untrained EAGLE-3 head (one layer, 32k draft vocabulary as the published
               Llama-3 heads) + Chain(4) on the 8B shape at batch 1 and 8. Efficiency = plain
               step (plain_8b's) / speculative cycle, both from `timed_step_seconds`; the loop's
               shapes are static, so a cycle costs what it costs whatever is accepted. Target
               >= 0.8 with the best drafter the project has.
  hf_8b        HF transformers' compiled static-cache generate on the same weights (converted in
               memory through DLPack) at batch 1 and 8 (assisted generation and prompt lookup
               run in hf_small, where the draft agrees with its target). Target: specdec plain
               >= 1.8x HF static compiled.
  small_step   the `small` target (random weights, bf16) plain step at batch 1: wall ms/step and
               device ms/step (CUPTI kernel time), kernels per step and the 30 costliest by
               name. Target <= 0.3 ms.
  speculation  DraftModel + Chain(4) at batch 1 and 8 on a synthetic aligned pair (below):
               efficiency = tokens/s / (tau x plain tokens/s). Target >= 0.8.
  train_mfu    the `small` target's train step on random tokens for a fixed number of steps:
               MFU against the datasheet peak and the measured matmul peak, with cuDNN's fused
               causal attention (the default on a GPU) and with XLA's, and with attention's FLOPs
               counted as PaLM's MFU does. Target >= 40% (judged on 6 N FLOPs per token,
               attention not counted).
  tree_attn    tree attention (Llama-3-8B heads) at T = 64, S = 4096 and 16384, batches 1/4/16,
               through experiments/bench_tree_attention.py's problems and timer: the Mosaic GPU
               kernel's % of roofline (bytes / ceiling) and against XLA and cuDNN. Targets 60% /
               80%, faster than both.
  hf_small     HF static compiled, assisted (with the same draft), prompt lookup and the dynamic
               cache on the small pair at batch 1, against specdec plain and DraftModel +
               Chain(4); rows recorded one by one.
Information:
  small_step_extra  the small_step with XLA attention, and with steps_per_sync 4 and 16.
  spec_extra   a 12-node static tree at batch 1 on speculation's pair, and an A/B of the verify
               walk at batch 1 (plain, Chain(4), the tree): the shipped walk against
               `verify_reference`, the data-dependent while_loop walk it replaced.
  eagle_small  EAGLE + Chain(4) on the `small` target: an aligned EAGLE-1 head and an untrained
               EAGLE-3 head (draft vocabulary V/4) on a scaled copy, against plain decoding of
               that copy timed the same way.
  eagle_8b_aligned  an aligned EAGLE-1 head (below) on a scaled copy of the 8B shape: its tau and
               decode speedup (EAGLE-1 reads the target's 128k LM head at every level).
  hf_8b_lookup HF prompt lookup on hf_8b's copy of the 8B weights at batch 1.
  cmdbuf       the small_step section again in child processes under XLA command-buffer flags
               (default, +WHILE, +WHILE with min graph size 1): what CUDA graphs would buy.

The synthetic aligned pair: random weights give a draft that never agrees with its target, so
tau would be ~1 and say nothing about overheads. The target here is the `small` shape with every
layer's output projections (attention o, MLP down) scaled by `scale`, so its residual stream is
mostly the token embedding; the draft is the target's own embedding, first `DRAFT_LAYERS` layers,
final norm and head. The scale is lowered until greedy tau at batch 1 is >= 2.5 (weights are loop
arguments, so this never recompiles). The aligned EAGLE-1 head for such a target passes the
token embedding through its fc ([I ; 0]) and scales its own layer's output projections alike, so
its predicted feature is about the next token's embedding, which the target's final norm and LM
head turn into what the scaled target predicts. Trained pairs are measured by
train_reference_gpu.py.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

# Leave GPU memory for torch (HF peers) in the same process; set before jax starts.
if "--smoke" not in sys.argv:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
os.environ.setdefault("BENCH_TARGET_SECONDS", "0.1")  # timed work per tree-attention call

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import specdec
from drafters import DraftModel, Eagle
from experiments import bench_tree_attention as bta
from experiments.bench_decode import timed_step_seconds
from experiments.profile_step import loop_runs, untrained_eagle3
from experiments.profile_train import causal_attention_as, train_setup
from experiments.train_reference_gpu import TREE
from specdec import xla_flags
from specdec.checkpoint import expand_table
from specdec.config import llama3_8b_config, tiny_config
from specdec.engine.generate import clear_compiled_loops
from specdec.model import Transformer
from specdec.models import Net
from specdec.verify import verify_reference
from train.configs import attention_flops_per_token, get_config, matmul_params
from train.trainer import device_peak_flops
from trees import Chain

DRAFT_LAYERS = 2  # layers of the synthetic draft (of the small target's 12)
SCALES = (0.5, 0.25, 0.1, 0.05, 0.02)  # output-projection scales tried for the aligned pair
TAU_WANTED = 2.5
# Scales tried for the aligned EAGLE-1 head: the 8B shape's layer outputs are larger against its
# embedding than `small`'s (run 10: tau 1.00 at 0.02 on the 8B shape, 2.28 on `small`)
ALIGNED_SCALES = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
TARGETS = {
    "plain_8b_pct": 85.0,  # % of the best measured bandwidth, batch 1 and 8
    "plain_8b_b1_ms": 4.45,
    "vs_hf": 1.8,  # specdec tokens/s over HF static compiled
    "small_step_ms": 0.3,
    "spec_efficiency": 0.8,
    "tree_pct_4k": 60.0,
    "tree_pct_16k": 80.0,
    "mfu_pct": 40.0,
}


# ---------------------------------------------------------------------------------- plumbing


class Budget(BaseException):
    """A section ran past its time budget. A BaseException, as KeyboardInterrupt is, so that the
    `except Exception` which keeps a table going past one failed measurement (here, in
    bench_tree_attention.run_problem, in the HF peers) does not swallow it: only Report.run
    catches it, and the section stops."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise Budget in the main thread after `seconds` (at the next Python bytecode)."""

    def expire(signum, frame):
        raise Budget(f"over its {seconds:.0f}s budget")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Report:
    """bench_all.json + bench_all.md under --out, rewritten after every section."""

    def __init__(self, out: Path | None, started: float, deadline: float):
        self.out, self.started, self.deadline = out, started, deadline
        self.data: dict = {"sections": {}, "ratios": []}
        self.log_file = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.log_file = open(out / "bench_all_log.txt", "a")  # noqa: SIM115

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.started:6.1f}s] {msg}"
        print(line, flush=True)
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def ratio(self, name: str, value, target: str, ok: bool | None, note: str = "") -> None:
        row = dict(name=name, value=value, target=target, met=ok, note=note)
        self.data["ratios"].append(row)
        self.log(f"RATIO {name}: {value} (target {target}) {'' if ok is None else ok} {note}")

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, name: str, budget: float, fn, *args):
        """Run a section under min(budget, time left); a failure is recorded, never raised."""
        seconds = min(budget, self.left() - 5)
        if seconds < 10:
            self.data["sections"][name] = {"skipped": f"{self.left():.0f}s left"}
            self.log(f"== {name}: skipped, {self.left():.0f}s left before the deadline")
            self.write()
            return None
        self.log(f"== {name} (budget {seconds:.0f}s)")
        start = time.perf_counter()
        result = None
        try:
            with time_limit(seconds):
                result = fn(*args)
            self.data["sections"][name] = {"seconds": round(time.perf_counter() - start, 1)}
        except (Exception, Budget) as e:  # keep going; the log has the traceback
            self.data["sections"][name] = {
                "seconds": round(time.perf_counter() - start, 1),
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
            }
            self.log(f"{name} failed: {self.data['sections'][name]['error']}")
            if self.log_file:
                traceback.print_exc(file=self.log_file)
                self.log_file.flush()
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        if self.out is None:
            return
        (self.out / "bench_all.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "bench_all.md").write_text(self.markdown())

    def markdown(self) -> str:
        d = self.data
        lines = [
            f"# bench_all on {d.get('device', '?')}",
            "",
            f"Command: `{d.get('command', '')}`; {d.get('versions', '')}; "
            f"elapsed {d.get('elapsed_s')} s.",
            "",
            "| ratio | measured | target | met | note |",
            "|---|---|---|---|---|",
        ]
        for r in d["ratios"]:
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            lines.append(f"| {r['name']} | {r['value']} | {r['target']} | {met} | {r['note']} |")
        lines += ["", "## Sections", ""]
        for name, s in d["sections"].items():
            lines.append(f"- {name}: {json.dumps(s, default=str)}")
        for key in ("ceilings", "small_step", "speculation", "eagle", "tree_attn", "train_mfu"):
            if key in d:
                lines += ["", f"## {key}", "", "```", json.dumps(d[key], indent=1, default=str)]
                lines.append("```")
        for key in ("plain_8b", "hf_8b", "hf_small"):
            if key in d:
                lines += ["", f"## {key}", "", "```", json.dumps(d[key], indent=1, default=str)]
                lines.append("```")
        return "\n".join(lines) + "\n"


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def import_torch(allow_cpu: bool = False):
    """(torch, transformers, "cuda") when both import and CUDA is available; with allow_cpu (the
    smoke run's check of the HF code paths) (torch, transformers, "cpu") without CUDA; else None."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    if torch.cuda.is_available():
        return torch, transformers, "cuda"
    return (torch, transformers, "cpu") if allow_cpu else None


def torch_sync(torch) -> None:
    """Wait for queued GPU work (nothing to wait for on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------- ceilings


def best_wall_seconds(fn, *args, reps: int = 20) -> float:
    """Best-of-N wall time of a jitted call (synchronised with block_until_ready)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def torch_ceilings(torch, num_bytes: int) -> dict:
    """Device-to-device copy and bf16 GEMV bandwidth timed with CUDA events (median and best)."""

    def events(fn, reps=30):
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e-3)
        return float(np.median(times)), float(min(times))

    out = {}
    n = num_bytes // 2
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    median, best = events(lambda: dst.copy_(src))
    out["torch_copy_median"] = 2 * num_bytes / median
    out["torch_copy_best"] = 2 * num_bytes / best
    cols = 65536
    rows = max(num_bytes // (2 * cols), 1)
    w = torch.randn(rows, cols, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(cols, dtype=torch.bfloat16, device="cuda")
    median, best = events(lambda: torch.mv(w, x))
    out["torch_gemv_median"] = w.numel() * 2 / median
    out["torch_gemv_best"] = w.numel() * 2 / best
    return out


def section_ceilings(report: Report, ctx: dict) -> None:
    smoke = ctx["smoke"]
    num_bytes = (64 << 20) if smoke else (4 << 30)
    res: dict = {}
    # jax, wall clock (best of N, block_until_ready)
    x = jax.random.normal(jax.random.key(0), (num_bytes // 2,), jnp.bfloat16)
    copy = jax.jit(lambda a: a * 2)
    res["jax_copy_wall_best"] = 2 * num_bytes / best_wall_seconds(copy, x)
    del x
    cols = 8192
    w = jax.random.normal(jax.random.key(1), (num_bytes // (2 * cols), cols), jnp.bfloat16)
    v = jax.random.normal(jax.random.key(2), (cols,), jnp.bfloat16)
    gemv = jax.jit(lambda a, b: a @ b)
    res["jax_gemv_wall_best"] = w.size * 2 / best_wall_seconds(gemv, w, v)
    # jax, device time (CUPTI through the tree-attention benchmark's timer)
    timer = ctx["timer"]
    res["timer"] = timer.method
    if timer.method == "cupti":
        res["jax_gemv_cupti_median"] = w.size * 2 / (timer(gemv, [(w, v)])["ms"] * 1e-3)
    del w, v
    if smoke:
        res["jax_copy_cupti_median"], res["matmul_flops"] = None, None
        m = 512
        a = jax.random.normal(jax.random.key(3), (m, m), jnp.float32)
        res["matmul_flops"] = 2 * m**3 / best_wall_seconds(jax.jit(lambda p: p @ p), a)
    else:
        bw, peak = bta.measure_ceilings(timer)  # 1 GiB copy and 8192^3 matmul, timer's method
        res["jax_copy_cupti_median" if timer.method == "cupti" else "jax_copy_timer"] = bw
        res["matmul_flops"] = peak
    if ctx["torch"] is not None and ctx["torch"][2] == "cuda":
        try:
            res.update(torch_ceilings(ctx["torch"][0], num_bytes))
            ctx["torch"][0].cuda.empty_cache()
        except Exception as e:
            res["torch_error"] = f"{type(e).__name__}: {e}"
    bandwidths = {k: v for k, v in res.items() if isinstance(v, float) and k != "matmul_flops"}
    best_key = max(bandwidths, key=bandwidths.get)
    ctx["bandwidth"], ctx["peak"] = bandwidths[best_key], res["matmul_flops"]
    res["ceiling"] = {"bytes_per_s": ctx["bandwidth"], "from": best_key}
    report.data["ceilings"] = res
    report.log(
        "bandwidths TB/s: "
        + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in bandwidths.items())
        + f"; ceiling {ctx['bandwidth'] / 1e12:.2f} ({best_key}); "
        f"matmul {fmt(res['matmul_flops'] and res['matmul_flops'] / 1e12, '.0f')} TFLOP/s"
    )


# ---------------------------------------------------------------------------------- models


def small_config(smoke: bool):
    if smoke:
        return tiny_config(vocab_size=512, num_layers=4)
    return get_config("small").model


def big_config(smoke: bool):
    return tiny_config(vocab_size=512) if smoke else llama3_8b_config()


def scaled_target(target: specdec.Model, scale: float) -> specdec.Model:
    """A copy of target whose layers' output projections (attention o, MLP down) are scaled by
    `scale` (new arrays for those; every other weight is shared, not copied)."""
    module = target.module()  # a fresh module over the same arrays
    state = nnx.state(module, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for layer in pure["layers"].values():
        layer["attn"]["o"] = layer["attn"]["o"] * scale
        layer["mlp"]["down"] = layer["mlp"]["down"] * scale
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return specdec.Model(module)


def scaled_pair(target: specdec.Model, scale: float, layers: int):
    """(target with layer output projections scaled, draft = its embedding, first layers, head)."""
    target = scaled_target(target, scale)
    pure = nnx.to_pure_dict(nnx.state(target.module(), nnx.Param))
    cfg = dataclasses.replace(target.config, num_layers=layers)
    draft_module = Transformer(
        cfg, rngs=nnx.Rngs(1), param_dtype=target.dtype, attention=target.attention
    )
    draft_state = nnx.state(draft_module, nnx.Param)
    draft_pure = nnx.to_pure_dict(draft_state)
    for key in draft_pure:
        if key == "layers":
            for i in draft_pure["layers"]:
                draft_pure["layers"][i] = pure["layers"][i]
        else:
            draft_pure[key] = pure[key]
    nnx.replace_by_pure_dict(draft_state, draft_pure)
    nnx.update(draft_module, draft_state)
    return target, specdec.Model(draft_module)


def aligned_eagle(target: specdec.Model, scale: float) -> Eagle:
    """An EAGLE-1 head that agrees with a `scaled_target`: fc passes the token embedding through
    (fc = [I ; 0], no bias) and its layer's output projections are scaled by `scale`, so the head
    predicts feature t+1 as about emb(token t+1), whose logits under the target's final norm and
    LM head are what the scaled target (residual stream mostly its input embedding) predicts."""
    eagle = Eagle.random(target, version=1)
    module = eagle.head.module()
    state = nnx.state(module, nnx.Param)
    pure = nnx.to_pure_dict(state)
    d = target.config.hidden_size
    dtype = pure["fc"].dtype
    pure["fc"] = jnp.concatenate([jnp.eye(d, dtype=dtype), jnp.zeros((d, d), dtype)])  # [2D, D]
    pure["fc_bias"] = jnp.zeros_like(pure["fc_bias"])
    for layer in pure["layers"].values():
        layer["o"] = layer["o"] * scale
        layer["mlp"]["down"] = layer["mlp"]["down"] * scale
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return dataclasses.replace(eagle, head=Net(*nnx.split(module)))


def prompts_for(cfg, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length)).tolist()


def device_step(ctx, model, prompts, max_new, **kwargs) -> dict:
    """Device (CUPTI) and wall ms per decode step and kernels per step, from two loop lengths
    sharing one compiled loop (prefill and launch costs cancel in the difference)."""
    timer = ctx["timer"]
    ((s_full, full, _), (s_half, half, _)), _ = loop_runs(model, prompts, max_new, timer, **kwargs)
    steps = max(s_full - s_half, 1)
    out = {
        "method": timer.method,
        "wall_ms_per_step": (full["wall_ms"] - half["wall_ms"]) / steps,
        "device_ms_per_step": (full["ms"] - half["ms"]) / steps,
    }
    if "kernels" in full and "kernels" in half:
        out["kernels_per_step"] = (full["kernels"] - half["kernels"]) / steps
    if "breakdown" in full and "breakdown" in half:
        out["kernels_by_name"] = kernels_per_step(full["breakdown"], half["breakdown"], steps)
    return out


def kernels_per_step(full: list, half: list, steps: int, top: int = 30) -> list[dict]:
    """Per decode step, by kernel name: launches and device microseconds (the difference of two
    loop lengths' (name, ms) lists), the `top` names by time: where the step's time goes."""
    totals: dict[str, list[float]] = {}
    for sign, breakdown in ((1, full), (-1, half)):
        for name, ms in breakdown:
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += sign
            entry[1] += sign * ms
    rows = [
        {"name": name, "per_step": n / steps, "us_per_step": 1e3 * ms / steps}
        for name, (n, ms) in totals.items()
        if n > 0
    ]
    return sorted(rows, key=lambda r: -r["us_per_step"])[:top]


# ---------------------------------------------------------------------------------- sections


def cupti_graph_note() -> str:
    """A warning for device figures taken with CUPTI while the loop runs as a CUDA graph: there
    CUPTI's kernel list counted each kernel twice (run 9: 379 kernels, 0.709 ms device a `small`
    step against 188 and 0.351 ms without graphs, a device sum above the step's wall clock)."""
    if "WHILE" not in os.environ.get("XLA_FLAGS", ""):
        return ""
    return "; device figures under CUDA graphs count each kernel twice (CUPTI): compare wall"


def section_small_step(report: Report, ctx: dict) -> None:
    cfg = small_config(ctx["smoke"])
    model = specdec.Model.random(cfg, seed=0, dtype=ctx["dtype"])
    ctx["small"] = model
    new = ctx["max_new"]
    prompts = prompts_for(cfg, 1, ctx["prompt_len"])
    step_s, out = timed_step_seconds(model, prompts, new)
    res = {
        "model": str(model),
        "wall_ms_per_step_generate": step_s * 1e3,
        "tok_s_end_to_end": out.stats.tokens_per_second,
        "weights_read_ms": cfg.num_params() * model.dtype.itemsize / ctx["bandwidth"] * 1e3,
    }
    # A shorter loop for the device timing keeps CUPTI's record count (kernels x reps) modest.
    res.update(device_step(ctx, model, prompts, min(new, 64)))
    report.data["small_step"] = res
    ms = res["wall_ms_per_step_generate"]
    report.ratio(
        "small target plain step, B=1 (ms, wall)",
        f"{ms:.3f} (device {fmt(res['device_ms_per_step'], '.3f')}, "
        f"{fmt(res.get('kernels_per_step'), '.0f')} kernels/step)",
        f"<= {TARGETS['small_step_ms']}",
        ms <= TARGETS["small_step_ms"],
        f"weights read in {res['weights_read_ms']:.3f} ms" + cupti_graph_note(),
    )


def section_small_step_extra(report: Report, ctx: dict) -> None:
    """Information beside small_step's target: the same weights with XLA's attention, and the
    loop checking for the end once per k steps."""
    model = ctx["small"]
    cfg, new = model.config, ctx["max_new"]
    prompts = prompts_for(cfg, 1, ctx["prompt_len"])
    res = report.data["small_step"]
    # The same weights with XLA's attention instead of the Pallas kernel and its helper kernels
    # (query fold, mask packing, split merge): at 1 query and a few hundred keys, fewer launches
    # may beat the faster attention.
    xla = specdec.Model.random(cfg, seed=0, dtype=ctx["dtype"], attention="xla")
    xla_s, _ = timed_step_seconds(xla, prompts, new)
    res["xla_attention"] = {"wall_ms_per_step_generate": xla_s * 1e3}
    res["xla_attention"].update(device_step(ctx, xla, prompts, min(new, 64)))
    report.ratio(
        "small target plain step, B=1, XLA attention (ms, wall)",
        f"{xla_s * 1e3:.3f} (device "
        f"{fmt(res['xla_attention']['device_ms_per_step'], '.3f')}, "
        f"{fmt(res['xla_attention'].get('kernels_per_step'), '.0f')} kernels/step)",
        f"<= {TARGETS['small_step_ms']}",
        xla_s * 1e3 <= TARGETS["small_step_ms"],
        "information: the default attention's alternative" + cupti_graph_note(),
    )
    # Checking "is every sequence done?" once per k steps (an inner loop of static trip count,
    # which the GPU runs without reading a predicate back) instead of every step.
    for k in SYNC_EVERY:
        step_k, out_k = timed_step_seconds(model, prompts, new, steps_per_sync=k)
        res[f"steps_per_sync_{k}"] = dict(
            wall_ms_per_step=step_k * 1e3, tok_s_end_to_end=out_k.stats.tokens_per_second
        )
        report.ratio(
            f"small target plain step, B=1, steps_per_sync={k} (ms, wall)",
            f"{step_k * 1e3:.3f} ({out_k.stats.tokens_per_second:.0f} tok/s end to end, "
            f"vs {res['tok_s_end_to_end']:.0f} checking every step)",
            f"<= {TARGETS['small_step_ms']}",
            step_k * 1e3 <= TARGETS["small_step_ms"],
            "idle steps after the end are in the end-to-end figure",
        )


SYNC_EVERY = (4, 16)  # steps_per_sync values the small_step section compares with 1


def section_speculation(report: Report, ctx: dict) -> None:
    base = ctx["small"]
    cfg = base.config
    new = ctx["max_new"]
    layers = min(DRAFT_LAYERS, cfg.num_layers - 1)
    chosen = None
    for scale in SCALES[:1] if ctx["smoke"] else SCALES:
        target, draft = scaled_pair(base, scale, layers)
        out = specdec.generate(
            target,
            prompts_for(cfg, 1, ctx["prompt_len"]),
            max_new_tokens=new,
            drafter=DraftModel(draft),
            policy=Chain(4),
        )
        report.log(f"scale {scale}: tau {out.stats.tau:.2f}")
        chosen = (scale, target, draft)
        if out.stats.tau >= TAU_WANTED:
            break
    scale, target, draft = chosen
    ctx["pair"] = (target, draft)
    rows = []
    for batch in ctx["batches"]:
        prompts = prompts_for(cfg, batch, ctx["prompt_len"], seed=batch)
        plain = [specdec.generate(target, prompts, max_new_tokens=new) for _ in range(2)][-1]
        kw = dict(drafter=DraftModel(draft), policy=Chain(4))
        spec = [specdec.generate(target, prompts, max_new_tokens=new, **kw) for _ in range(2)][-1]
        eff = spec.stats.tokens_per_second / (spec.stats.tau * plain.stats.tokens_per_second)
        row = dict(
            batch=batch,
            scale=scale,
            draft_layers=layers,
            plain_tok_s=plain.stats.tokens_per_second,
            spec_tok_s=spec.stats.tokens_per_second,
            tau=spec.stats.tau,
            speedup=spec.stats.tokens_per_second / plain.stats.tokens_per_second,
            efficiency=eff,
            agreement=float((spec.tokens == plain.tokens).mean()),
        )
        if batch == 1:
            ctx["small_tok_s"] = {"plain": row["plain_tok_s"], "chain4": row["spec_tok_s"]}
        rows.append(row)
        report.log(json.dumps(row))
        report.ratio(
            f"speculation efficiency, DraftModel+Chain(4), B={batch}",
            f"{eff:.2f} (tau {row['tau']:.2f}, {row['spec_tok_s']:.0f} vs plain "
            f"{row['plain_tok_s']:.0f} tok/s)",
            f">= {TARGETS['spec_efficiency']}",
            eff >= TARGETS["spec_efficiency"],
            f"synthetic aligned pair (scale {scale}, {layers}-layer draft)",
        )
        report.data["speculation"] = rows
        report.write()


def eagle_rows(report: Report, ctx: dict, target, label: str, heads, plain_s: dict) -> None:
    """EAGLE + Chain(4) against plain decoding of the same target: seconds per target forward
    (`timed_step_seconds`, prefill cancels), so efficiency = plain step / speculative cycle, which
    is tokens/s / (tau x plain tokens/s) on decode time. The loop's shapes are static, so a
    cycle costs the same whatever is accepted: an untrained head's efficiency is the trained
    one's, only its tau differs."""
    new, plen = ctx["max_new"], ctx["prompt_len"]
    for name, drafter, note in heads:
        for batch in ctx["batches"]:
            prompts = prompts_for(target.config, batch, plen, seed=batch)
            cycle_s, out = timed_step_seconds(
                target, prompts, new, drafter=drafter, policy=Chain(4)
            )
            eff = plain_s[batch] / cycle_s
            row = dict(
                target=label,
                head=name,
                batch=batch,
                plain_ms=plain_s[batch] * 1e3,
                cycle_ms=cycle_s * 1e3,
                tau=out.stats.tau,
                efficiency=eff,
                decode_speedup=out.stats.tau * eff,
                end_to_end_tok_s=out.stats.tokens_per_second,
            )
            report.log(json.dumps(row))
            report.ratio(
                f"speculation efficiency, {name}+Chain(4), {label}, B={batch}",
                f"{eff:.2f} (cycle {row['cycle_ms']:.3f} vs plain {row['plain_ms']:.3f} ms; "
                f"tau {row['tau']:.2f}, decode {row['decode_speedup']:.2f}x plain)",
                f">= {TARGETS['spec_efficiency']}",
                eff >= TARGETS["spec_efficiency"],
                note,
            )
            report.data.setdefault("eagle", []).append(row)
            report.write()


def aligned_scale(
    report: Report, ctx: dict, base: specdec.Model
) -> tuple[float, specdec.Model, Eagle]:
    """The largest of ALIGNED_SCALES whose scaled target and aligned EAGLE-1 head reach greedy tau
    >= TAU_WANTED at batch 1 (the smallest tried if none does)."""
    prompts = prompts_for(base.config, 1, ctx["prompt_len"])
    for scale in ALIGNED_SCALES[:1] if ctx["smoke"] else ALIGNED_SCALES:
        target = scaled_target(base, scale)
        head = aligned_eagle(target, scale)
        tau = specdec.generate(target, prompts, max_new_tokens=32, drafter=head).stats.tau
        report.log(f"aligned EAGLE-1, scale {scale}: tau {tau:.2f}")
        if tau >= TAU_WANTED:
            break
    return scale, target, head


def section_eagle_8b(report: Report, ctx: dict) -> None:
    """An EAGLE-3 head on the 8B shape (one layer, 32k draft vocabulary as the published Llama-3
    heads, untrained) on the random target, against plain_8b's step at the same batch and
    prompts."""
    base = ctx["big"]
    eagle3 = untrained_eagle3(base)
    eagle_rows(
        report,
        ctx,
        base,
        "8B shape",
        [("EAGLE-3", eagle3, "untrained 1-layer head, draft vocab 32k: tau ~1, cost as trained")],
        ctx["big_step_s"],
    )


def section_eagle_8b_aligned(report: Report, ctx: dict) -> None:
    """Information: an aligned EAGLE-1 head on a scaled copy of the 8B shape (its tau and decode
    speedup; EAGLE-1 reads the target's 128k LM head at every level)."""
    base = ctx["big"]
    scale, target, head = aligned_scale(report, ctx, base)
    eagle_rows(
        report,
        ctx,
        target,
        "8B shape",
        [("EAGLE-1 aligned", head, f"synthetic aligned head (scale {scale})")],
        ctx["big_step_s"],
    )


def section_eagle_small(report: Report, ctx: dict) -> None:
    """EAGLE heads on the `small` target: EAGLE-3 (draft vocab V/4, untrained) and an aligned
    EAGLE-1 head on a scaled copy, each against plain decoding of its own target."""
    base = ctx["small"]
    new, plen = ctx["max_new"], ctx["prompt_len"]
    scale, target, head = aligned_scale(report, ctx, base)
    plain_s = {
        b: timed_step_seconds(target, prompts_for(base.config, b, plen, seed=b), new)[0]
        for b in ctx["batches"]
    }
    eagle3 = untrained_eagle3(target)
    eagle_rows(
        report,
        ctx,
        target,
        "small",
        [
            ("EAGLE-1 aligned", head, f"synthetic aligned head (scale {scale})"),
            ("EAGLE-3", eagle3, "untrained 1-layer head, draft vocab V/4: tau ~1"),
        ],
        plain_s,
    )


def section_spec_extra(report: Report, ctx: dict) -> None:
    """Information beside speculation's targets, on its pair: a 12-node static tree at batch 1,
    and the verify walk against the while_loop walk it replaced."""
    # The static tree's verify walk runs a static loop of 11 iterations, where a chain's 4 are
    # unrolled.
    target, draft = ctx["pair"]
    cfg, new = target.config, ctx["max_new"]
    prompts = prompts_for(cfg, 1, ctx["prompt_len"], seed=1)
    kw = dict(drafter=DraftModel(draft), policy=TREE)
    spec = [specdec.generate(target, prompts, max_new_tokens=new, **kw) for _ in range(2)][-1]
    plain_tok_s = ctx["small_tok_s"]["plain"]
    eff = spec.stats.tokens_per_second / (spec.stats.tau * plain_tok_s)
    rows = report.data["speculation"]
    rows.append(
        dict(
            batch=1,
            policy=f"Static({TREE.max_nodes - 1})",
            spec_tok_s=spec.stats.tokens_per_second,
            tau=spec.stats.tau,
            efficiency=eff,
        )
    )
    report.log(json.dumps(rows[-1]))
    report.ratio(
        f"speculation efficiency, DraftModel+Static({TREE.max_nodes - 1}), B=1 (information)",
        f"{eff:.2f} (tau {spec.stats.tau:.2f}, {spec.stats.tokens_per_second:.0f} tok/s)",
        f">= {TARGETS['spec_efficiency']}",
        eff >= TARGETS["spec_efficiency"],
        "same pair",
    )
    report.write()
    walk_ab(report, ctx, target, draft)


@contextlib.contextmanager
def reference_walk():
    """Decode loops traced with `verify_reference` (the data-dependent while_loop walk)."""
    import specdec.engine.loop as loop_module

    def fresh():
        clear_compiled_loops()
        jax.clear_caches()

    old = loop_module.verify
    loop_module.verify = verify_reference
    fresh()
    try:
        yield
    finally:
        loop_module.verify = old
        fresh()


def walk_ab(report: Report, ctx: dict, target, draft) -> None:
    """What the loop-free / static-trip-count walk bought: tokens/s at batch 1, shipped walk
    against the reference while_loop walk, for plain decoding, Chain(4) and the static tree."""
    prompts = prompts_for(target.config, 1, ctx["prompt_len"], seed=1)
    new = ctx["max_new"]
    cases = [
        ("plain", {}),
        ("Chain(4)", dict(drafter=DraftModel(draft), policy=Chain(4))),
        (f"Static({TREE.max_nodes - 1})", dict(drafter=DraftModel(draft), policy=TREE)),
    ]
    if ctx["smoke"]:
        cases = cases[:1]  # the code path, within the smoke run's two minutes
    run = lambda kw: [specdec.generate(target, prompts, max_new_tokens=new, **kw) for _ in range(2)]
    shipped = {label: run(kw)[-1].stats.tokens_per_second for label, kw in cases}
    with reference_walk():
        reference = {label: run(kw)[-1].stats.tokens_per_second for label, kw in cases}
    report.data["walk_ab"] = {"shipped": shipped, "reference_while_walk": reference}
    for label, _ in cases:
        gain = shipped[label] / reference[label]
        report.ratio(
            f"verify walk, {label}, B=1: shipped vs while_loop walk (tok/s)",
            f"{gain:.2f}x ({shipped[label]:.0f} vs {reference[label]:.0f})",
            "> 1",
            gain > 1,
            "what removing the walk's host round trips bought",
        )


def section_tree_attn(report: Report, ctx: dict) -> None:
    timer = ctx["timer"]
    if ctx["smoke"]:
        problems = [bta.Problem(1, 4, 256)]
        fns = {k: v for k, v in bta.implementations().items() if k == "xla"}
    else:
        problems = [bta.Problem(b, 64, s) for s in (4096, 16384) for b in (1, 4, 16)]
        fns = {k: v for k, v in bta.implementations().items() if k != "triton"}
    bw, peak = ctx["bandwidth"], ctx["peak"] or float("inf")
    rows = []
    for problem in problems:
        row = bta.run_problem(problem, fns, timer, report.log)
        roof_ms = max(problem.bytes / bw, problem.flops / peak) * 1e3
        times = {k: (v["ms"] if v else None) for k, v in row["times"].items()}
        kernels = [k for k in ("mosaic_gpu", "triton") if k in fns]
        ours = [times[k] for k in kernels if times.get(k) is not None]
        # A kernel that failed is reported as failed, not replaced by a baseline's time; XLA
        # stands in only where no kernel runs (the CPU smoke run).
        best = min(ours) if ours else (None if kernels else times.get("xla"))
        summary = dict(
            B=problem.batch,
            T=problem.block,
            S=problem.slots,
            roofline_us=roof_ms * 1e3,
            times_us={k: (None if v is None else v * 1e3) for k, v in times.items()},
            best_pct=None if best is None else 100 * roof_ms / best,
            vs_xla=None if best is None or times.get("xla") is None else times["xla"] / best,
            vs_cudnn=None if best is None or times.get("cudnn") is None else times["cudnn"] / best,
            errors=row["errors"],
        )
        rows.append(summary)
        report.data["tree_attn"] = rows
        want = TARGETS["tree_pct_4k"] if problem.slots < 16384 else TARGETS["tree_pct_16k"]
        pct = summary["best_pct"]
        if pct is not None:
            met = bool(
                pct >= want
                and (summary["vs_xla"] or 0) > 1
                and (summary["vs_cudnn"] is None or summary["vs_cudnn"] > 1)
            )
        else:
            met = False if kernels else None  # a kernel that failed misses its target
        failed = "; ".join(f"{k}: {row['errors'][k]}" for k in kernels if times.get(k) is None)
        report.ratio(
            f"tree attention B={problem.batch} T={problem.block} S={problem.slots}, % roofline",
            f"{fmt(pct, '.0f')}% ({fmt(best and best * 1e3, '.1f')} us vs roofline "
            f"{roof_ms * 1e3:.1f} us; {fmt(summary['vs_xla'])}x xla, "
            f"{fmt(summary['vs_cudnn'])}x cudnn)",
            f">= {want:.0f}% and faster than xla, cudnn",
            met,
            failed,
        )
        report.write()


def measure_train(cfg, steps: int, dtype) -> dict:
    """Mean seconds per train step (AdamW, random tokens) after two compile / warm-up steps."""
    train_step, state, batches, lr = train_setup(cfg, dtype, donate=True, num_batches=2)
    start = time.perf_counter()
    for i in range(2):  # compile + warm
        state, metrics = train_step(state, batches[i % 2], lr)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = train_step(state, batches[i % 2], lr)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return dict(step_s=seconds, compile_s=compile_s, loss=float(metrics["loss"]))


def section_train_mfu(report: Report, ctx: dict) -> None:
    smoke = ctx["smoke"]
    if smoke:
        cfg, steps = get_config("tiny", batch_size=2, seq_len=32), 3
    else:
        cfg, steps = get_config("small"), 20
    dtype = jnp.dtype(jnp.float32 if smoke else jnp.bfloat16)
    flops_per_token = 6 * matmul_params(cfg.model)
    palm_per_token = flops_per_token + attention_flops_per_token(cfg.model, cfg.seq_len)
    datasheet, source = device_peak_flops()
    # The training forward with XLA's unfused causal attention, then with cuDNN's fused kernel
    # (what SPECDEC_CAUSAL_ATTENTION=auto picks on a GPU where its probe passes; GPU only).
    variants = [("xla attention", causal_attention_as("xla"))]
    if jax.devices()[0].platform == "gpu":  # the default there first: a cut keeps its row
        variants.insert(0, ("cudnn attention", causal_attention_as("cudnn")))
    rows = []
    report.data["train_mfu"] = rows
    for label, patch in variants:
        try:
            with patch:
                timed = measure_train(cfg, steps, dtype)
        except Exception as e:
            rows.append(dict(variant=label, error=f"{type(e).__name__}: {str(e)[:200]}"))
            report.log(f"train variant {label} failed: {rows[-1]['error']}")
            continue
        tokens_per_s = cfg.batch_size * cfg.seq_len / timed["step_s"]
        res = dict(
            variant=label,
            config=cfg.name,
            batch=cfg.batch_size,
            seq_len=cfg.seq_len,
            compute_dtype=dtype.name,
            step_ms=timed["step_s"] * 1e3,
            tokens_per_s=tokens_per_s,
            compile_s=timed["compile_s"],
            loss=timed["loss"],
            mfu_datasheet=None if datasheet is None else flops_per_token * tokens_per_s / datasheet,
            mfu_datasheet_palm=None
            if datasheet is None
            else palm_per_token * tokens_per_s / datasheet,
            peak_source=source,
            mfu_measured_peak=None
            if not ctx["peak"]
            else flops_per_token * tokens_per_s / ctx["peak"],
        )
        rows.append(res)
        report.log(json.dumps(res))
        mfu = res["mfu_datasheet"]
        measured, palm = res["mfu_measured_peak"], res["mfu_datasheet_palm"]
        report.ratio(
            f"training MFU, `{cfg.name}` target, {label}",
            f"{fmt(mfu and 100 * mfu, '.1f')}% of datasheet peak "
            f"({fmt(measured and 100 * measured, '.1f')}% of measured matmul peak; "
            f"{fmt(palm and 100 * palm, '.1f')}% counting attention FLOPs as PaLM does; "
            f"{tokens_per_s:.0f} tok/s)",
            f">= {TARGETS['mfu_pct']:.0f}%",
            None if mfu is None else 100 * mfu >= TARGETS["mfu_pct"],
            f"{steps} steps, B={cfg.batch_size}, L={cfg.seq_len}, random tokens",
        )
        report.write()


def section_plain_8b(report: Report, ctx: dict) -> None:
    cfg = big_config(ctx["smoke"])
    start = time.perf_counter()
    model = specdec.Model.random(cfg, seed=0, dtype=ctx["dtype"])
    report.log(f"random {model} built in {time.perf_counter() - start:.1f}s")
    ctx["big"] = model
    new, plen = ctx["max_new"], ctx["prompt_len"]
    weight_bytes = cfg.num_params() * model.dtype.itemsize
    rows = []
    for batch in ctx["batches"]:
        prompts = prompts_for(cfg, batch, plen, seed=batch)
        step_s, out = timed_step_seconds(model, prompts, new)
        # the timed steps run between N/2 + 1 and N new tokens: mean context P + 3N/4
        kv_bytes = (
            2 * cfg.num_layers * batch * (plen + 0.75 * new) * cfg.num_kv_heads * cfg.head_dim
        ) * model.dtype.itemsize
        bandwidth = (weight_bytes + kv_bytes) / step_s
        row = dict(
            batch=batch,
            ms_per_step=step_s * 1e3,
            decode_tok_s=batch / step_s,
            end_to_end_tok_s=out.stats.tokens_per_second,
            effective_tb_s=bandwidth / 1e12,
            pct_ceiling=100 * bandwidth / ctx["bandwidth"],
            attention=model.attention,
        )
        rows.append(row)
        ctx.setdefault("big_tok_s", {})[batch] = out.stats.tokens_per_second
        ctx.setdefault("big_step_s", {})[batch] = step_s
        report.data["plain_8b"] = rows
        report.log(json.dumps(row))
        ok = row["pct_ceiling"] >= TARGETS["plain_8b_pct"]
        if batch == 1:
            ok = ok and row["ms_per_step"] <= TARGETS["plain_8b_b1_ms"]
        report.ratio(
            f"plain decoding 8B shape, B={batch}, % of best bandwidth",
            f"{row['pct_ceiling']:.0f}% ({row['ms_per_step']:.2f} ms/step, "
            f"{row['effective_tb_s']:.2f} TB/s, {row['end_to_end_tok_s']:.0f} tok/s)",
            f">= {TARGETS['plain_8b_pct']:.0f}%"
            + (f", <= {TARGETS['plain_8b_b1_ms']} ms" if batch == 1 else ""),
            ok,
        )
        report.write()


# ---------------------------------------------------------------------------------- HF peers


def to_hf(model: specdec.Model, torch, transformers, device: str = "cuda"):
    """The same weights as an HF LlamaForCausalLM on `device`, in the model's dtype (bf16 on the
    GPU, float32 in the smoke run), copied through DLPack."""
    cfg = model.config
    dtype_name = jnp.dtype(model.dtype).name  # "bfloat16" / "float32"
    fields = {k: v for k, v in cfg.to_hf(torch_dtype=dtype_name).items() if k != "model_type"}
    hf_cfg = transformers.LlamaConfig(**fields)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype_name))
    try:
        with torch.device(device):
            hf = transformers.LlamaForCausalLM(hf_cfg)
    finally:
        torch.set_default_dtype(previous)
    pure = nnx.to_pure_dict(nnx.state(model.module(), nnx.Param))
    named = dict(hf.named_parameters())
    with torch.no_grad():
        for name, path, rule in expand_table(cfg):
            node = pure
            for key in path:
                node = node[key]
            value = jnp.asarray(rule.to_hf(jnp.asarray(node), cfg), dtype_name)
            tensor = torch.from_dlpack(value)
            param = named[name]
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: HF {tuple(param.shape)} vs ours {tuple(tensor.shape)}")
            param.copy_(tensor)
            # jax may reuse the buffer once `value` is dropped: let torch's copy finish first
            torch_sync(torch)
            del value, tensor
    if cfg.tie_word_embeddings:
        hf.tie_weights()
    hf.eval()
    hf.generation_config.pad_token_id = 0
    return hf


def hf_tok_s(torch, hf, prompts, new, label, report, warm=2, *, tokens=False, **kwargs) -> dict:
    """Tokens/s of HF generate (greedy), after `warm` warm-up calls (compile, CUDA graphs); a
    failure becomes a row with the error (the other peers still run)."""
    try:
        return _hf_tok_s(torch, hf, prompts, new, label, report, warm, tokens, **kwargs)
    except Exception as e:
        report.log(f"HF {label} failed: {type(e).__name__}: {e}")
        if report.log_file:
            traceback.print_exc(file=report.log_file)
        return dict(label=label, batch=len(prompts), tok_s=None, error=f"{type(e).__name__}: {e}")


def equal_prefix(a, b) -> int:
    """How many leading entries of two equal-length sequences agree."""
    differ = np.flatnonzero(np.asarray(a) != np.asarray(b))
    return int(differ[0]) if differ.size else len(a)


def teacher_forced_top1(torch, hf, prompts, new_tokens) -> float:
    """Fraction of our generated tokens [B, new] that HF's model also ranks first when fed the
    prompt and our tokens before it (one forward; the same weights give ~1 up to near-ties)."""
    prompt = np.asarray(prompts)
    full = np.concatenate([prompt, np.asarray(new_tokens)], axis=1)  # [B, P + new]
    with torch.no_grad():
        logits = hf(torch.tensor(full, device=hf.device)).logits  # [B, P + new, V]
    # the logits at position i predict token i + 1: positions P - 1 .. P + new - 2
    theirs = logits[:, prompt.shape[1] - 1 : -1].argmax(-1).cpu().numpy()
    return float(np.mean(theirs == np.asarray(new_tokens)))


def _hf_tok_s(torch, hf, prompts, new, label, report, warm, tokens, **kwargs) -> dict:
    ids = torch.tensor(prompts, device=hf.device)
    mask = torch.ones_like(ids)

    def run():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, **kwargs)

    start = time.perf_counter()
    run()
    torch_sync(torch)
    first = time.perf_counter() - start
    for _ in range(warm - 1):
        run()
    torch_sync(torch)
    start = time.perf_counter()
    out = run()
    torch_sync(torch)
    seconds = time.perf_counter() - start
    generated = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    row = dict(
        label=label,
        batch=ids.shape[0],
        tok_s=generated / seconds,
        generated=generated,
        first_call_s=first,
    )
    report.log(json.dumps(row))
    if tokens:  # [B, new], for the caller to compare with ours (not part of the report)
        row["new_tokens"] = out[:, ids.shape[1] :].tolist()
    return row


def section_hf_8b(report: Report, ctx: dict) -> None:
    torch, transformers, where = ctx["torch"]
    model = ctx["big"]
    cfg = model.config
    new, plen = ctx["max_new"], ctx["prompt_len"]
    start = time.perf_counter()
    hf = to_hf(model, torch, transformers, where)
    report.log(f"HF copy of the 8B weights in {time.perf_counter() - start:.1f}s")
    rows = []
    report.data["hf_8b"] = rows
    for batch in ctx["batches"]:
        prompts = prompts_for(cfg, batch, plen, seed=batch)
        row = hf_tok_s(
            torch,
            hf,
            prompts,
            new,
            "static compiled",
            report,
            cache_implementation="static",
            min_new_tokens=new,
        )
        rows.append(row)
        ours = ctx.get("big_tok_s", {}).get(batch)
        ratio = None if ours is None or not row["tok_s"] else ours / row["tok_s"]
        report.ratio(
            f"8B shape plain, specdec vs HF static compiled, B={batch}",
            f"{fmt(ratio)}x ({fmt(ours, '.0f')} vs {fmt(row['tok_s'], '.0f')} tok/s)",
            f">= {TARGETS['vs_hf']}x",
            None if ratio is None else ratio >= TARGETS["vs_hf"],
        )
        report.write()
    ctx["hf_big"] = hf  # for hf_8b_lookup, after the targets


def section_hf_8b_lookup(report: Report, ctx: dict) -> None:
    torch, _, where = ctx["torch"]
    hf = ctx.pop("hf_big")
    cfg = ctx.pop("big").config  # the 8B weights are not needed after this section
    prompts = prompts_for(cfg, 1, ctx["prompt_len"], seed=1)
    row = hf_tok_s(
        torch, hf, prompts, ctx["max_new"], "prompt lookup", report, warm=1,
        prompt_lookup_num_tokens=10,
    )  # fmt: skip
    report.data.setdefault("hf_8b", []).append(row)
    report.write()
    del hf
    if where == "cuda":
        torch.cuda.empty_cache()


def section_hf_small(report: Report, ctx: dict) -> None:
    torch, transformers, where = ctx["torch"]
    target, draft = ctx["pair"]
    cfg = target.config
    new, plen = ctx["max_new"], ctx["prompt_len"]
    hf_target = to_hf(target, torch, transformers, where)
    hf_draft = to_hf(draft, torch, transformers, where)
    prompts = prompts_for(cfg, 1, plen, seed=1)
    peers = (  # label, warm-up calls, generate options; the issue's three peers first
        ("static compiled", 2, dict(cache_implementation="static", min_new_tokens=new)),
        ("assisted", 1, dict(assistant_model=hf_draft)),
        ("prompt lookup", 1, dict(prompt_lookup_num_tokens=10)),
        ("dynamic cache", 1, {}),
    )
    # Same weights? A wrong conversion would time another model. Greedy tokens diverge for good
    # at the first near-tie that bf16 rounding flips (random weights: flat logits), so the check
    # is teacher-forced: HF's argmax after each prefix of our output, against our next token.
    mine = specdec.generate(target, prompts, max_new_tokens=new).tokens  # [1, new]
    report.data["hf_small_teacher_forced_top1"] = teacher_forced_top1(
        torch, hf_target, prompts, mine
    )
    rows = report.data["hf_small"] = []  # row by row, so a budget cut keeps the peers done
    ours = ctx.get("small_tok_s", {})
    for label, warm, options in peers:
        row = hf_tok_s(torch, hf_target, prompts, new, label, report, warm, tokens=True, **options)
        theirs = np.asarray(row.pop("new_tokens", None) or [[]])
        if row["tok_s"] and theirs.shape == mine.shape:
            row["greedy_agreement_with_specdec"] = float(np.mean(theirs == mine))
            row["greedy_equal_prefix"] = equal_prefix(theirs[0], mine[0])
        rows.append(row)
        if not row["tok_s"]:
            continue
        for name, tok_s in ours.items():
            report.ratio(
                f"small pair B=1, specdec {name} vs HF {row['label']}",
                f"{tok_s / row['tok_s']:.2f}x ({tok_s:.0f} vs {row['tok_s']:.0f} tok/s)",
                "-",
                None,
                f"HF's greedy tokens equal ours for the first {row.get('greedy_equal_prefix')}"
                f" of {new}; teacher-forced top-1 agreement "
                f"{fmt(100 * report.data['hf_small_teacher_forced_top1'], '.1f')}%",
            )
        report.write()
    del hf_target, hf_draft
    if where == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------- command buffers

# XLA flag sets tried on the small plain step, each in a child process (flags are read at start).
# Upstream XLA captures conditionals in command buffers by default but not while loops (this
# jax's XLA may differ, hence the explicit +CONDITIONAL); +WHILE lets a whole decode loop (a
# data-dependent while) become one CUDA graph with a device-side loop condition, so the host no
# longer waits for each step's predicate, nor for `probabilities`' temperature / filter conds.
# The last is what `import specdec` adds (specdec/xla_flags.py); each child runs with exactly its
# variant's flags.
FLAG_VARIANTS = (
    ("XLA default", ""),
    ("+CONDITIONAL,+WHILE", "--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE"),
    ("+CONDITIONAL,+WHILE min_graph_size=1 (specdec)", " ".join(xla_flags.COMMAND_BUFFER_FLAGS)),
)


def section_cmdbuf(report: Report, ctx: dict) -> None:
    rows = []
    report.data["cmdbuf"] = rows
    for label, flags in FLAG_VARIANTS:
        left = report.left() - 10
        if left < 40:
            rows.append(dict(flags=label, skipped=f"{left:.0f}s left"))
            break
        out = Path(report.out or "/tmp/bench_all") / f"cmdbuf_{len(rows)}"
        env = dict(os.environ, XLA_FLAGS=flags, XLA_PYTHON_CLIENT_MEM_FRACTION="0.15")
        env["SPECDEC_COMMAND_BUFFERS"] = "0"  # exactly `flags` (not specdec's default added)
        command = [
            sys.executable,
            __file__,
            "--sections",
            "small_step",
            "--no-torch",
            "--bandwidth",
            str(ctx["bandwidth"]),
            "--out",
            str(out),
            "--deadline-s",
            str(min(120.0, left - 5)),
        ] + (["--smoke"] if ctx["smoke"] else [])
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=left)
        row = dict(flags=label, xla_flags=flags, rc=done.returncode)
        try:
            child = json.loads((out / "bench_all.json").read_text())
            row.update(child.get("small_step", {}), sections=child.get("sections"))
        except (OSError, ValueError) as e:
            row["error"] = f"{type(e).__name__}: {e}; stderr tail: {done.stderr[-300:]}"
        rows.append(row)
        report.log(json.dumps(row, default=str))
        ms = row.get("wall_ms_per_step_generate")
        report.ratio(
            f"small target plain step, B=1, XLA flags {label!r} (ms, wall)",
            f"{fmt(ms, '.3f')} (device {fmt(row.get('device_ms_per_step'), '.3f')})",
            f"<= {TARGETS['small_step_ms']}",
            None if ms is None else ms <= TARGETS["small_step_ms"],
        )
        report.write()


# ---------------------------------------------------------------------------------- main


SECTIONS = (  # name, budget on the GPU (s), needs torch; in priority order (the deadline cuts)
    # the targets (run 10: about 540 s in all, from the start of the process)
    ("ceilings", 30, False),
    ("plain_8b", 110, False),  # run 10: 47 s
    ("eagle_8b", 110, False),  # run 10: 65 s
    ("hf_8b", 160, True),  # run 10: 139 s for static compiled B=1 and 8 (+ 37 s prompt lookup)
    ("small_step", 60, False),  # run 10: about 30 s without the variants now in small_step_extra
    ("speculation", 90, False),  # run 10: about 40 s without the rows now in spec_extra
    ("train_mfu", 60, False),  # run 10: 29 s
    ("tree_attn", 90, False),  # run 10: 68 s, cut inside B=4 S=16k at 60
    ("hf_small", 100, True),  # run 10: cut at 60 s (static 30 s, dynamic 17 s, in assisted)
    # information, with the time left
    ("small_step_extra", 60, False),
    ("spec_extra", 90, False),  # run 10: about 55 s
    ("eagle_small", 100, False),  # run 10: 89 s
    ("eagle_8b_aligned", 100, False),  # run 10: 73 s
    ("hf_8b_lookup", 60, True),  # run 10: 37 s
    ("cmdbuf", 150, False),  # only with time left, or alone: --sections cmdbuf
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.environ.get("OUT"), help="bench_all.md/.json go here")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, any backend")
    p.add_argument("--deadline-s", type=float, help="wall-clock end of the whole run")
    p.add_argument(
        "--sections", nargs="*", default=[], help="a subset of the sections (commas or spaces)"
    )
    p.add_argument("--no-torch", action="store_true", help="skip the torch / HF parts")
    p.add_argument(
        "--bandwidth", type=float, help="bytes/s ceiling to use instead of measuring ceilings"
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    smoke = args.smoke
    deadline = started + (args.deadline_s or (115 if smoke else 530))
    report = Report(Path(args.out) if args.out else None, started, deadline)
    device = jax.devices()[0]
    torch_pair = None if args.no_torch else import_torch(allow_cpu=smoke)
    report.data["device"] = f"{len(jax.devices())} x {device.device_kind} ({device.platform})"
    report.data["command"] = "python3 experiments/bench_all.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    versions = f"jax {jax.__version__}"
    if torch_pair is not None:
        versions += (
            f", torch {torch_pair[0].__version__} ({torch_pair[2]}), "
            f"transformers {torch_pair[1].__version__}"
        )
    report.data["versions"] = versions
    report.data["xla_flags"] = xla_flags.describe()
    report.log(f"{report.data['device']}; {versions}; torch parts: {torch_pair is not None}")
    if not smoke and device.platform != "gpu":
        raise SystemExit(f"no GPU: jax's backend is {device.platform!r} (use --smoke)")

    ctx = dict(
        smoke=smoke,
        torch=torch_pair,
        timer=bta.Timer(),
        dtype=jnp.dtype(jnp.float32 if smoke else jnp.bfloat16),
        prompt_len=16 if smoke else 128,
        max_new=16 if smoke else 256,
        batches=(1,) if smoke else (1, 8),  # the smoke run covers the code, not both sizes
        bandwidth=args.bandwidth,
        peak=None,
    )
    wanted = {name for arg in args.sections for name in arg.split(",") if name} or None
    unknown = (wanted or set()) - {name for name, *_ in SECTIONS}
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}; known: {[s[0] for s in SECTIONS]}")
    needs = {
        "speculation": ["small"],
        "small_step_extra": ["small"],
        "eagle_small": ["small"],
        "hf_small": ["pair"],
        "spec_extra": ["pair", "small_tok_s"],
        "hf_8b": ["big"],
        "hf_8b_lookup": ["hf_big"],
        "eagle_8b": ["big_step_s"],
        "eagle_8b_aligned": ["big", "big_step_s"],
    }
    for name, budget, needs_torch in SECTIONS:
        if name == "ceilings" and args.bandwidth is not None:
            continue
        if wanted is not None and name not in wanted and name != "ceilings":
            continue
        if needs_torch and torch_pair is None:
            why = "torch and transformers are not importable" + ("" if smoke else " with CUDA")
            report.data["sections"][name] = {"skipped": why}
            report.log(f"== {name}: skipped ({why})")
            continue
        missing = [k for k in needs.get(name, []) if k not in ctx]
        if missing:
            report.data["sections"][name] = {"skipped": f"needs {missing} from an earlier one"}
            report.log(f"== {name}: skipped, needs {missing}")
            continue
        report.run(name, budget, globals()[f"section_{name}"], report, ctx)
        if name == "ceilings" and ctx["bandwidth"] is None:
            ctx["bandwidth"] = 1e12  # a stand-in so later sections still run; the json says so
            report.data["ceilings_fallback"] = True
    report.log("done")
    report.write()
    print("\n" + report.markdown(), flush=True)


if __name__ == "__main__":
    main()
