"""Experiment 7: where the time of a decode step goes, against each part's hardware roofline.

    PYTHONPATH=. python -m experiments.scaling.time_split --smoke
    PYTHONPATH=. python -m experiments.scaling.time_split --out-dir $OUT [--eagle DIR]

What is measured, honestly: the loop's step (specdec.engine.loop.step) is ONE fused XLA program;
its named scopes (draft, verify_forward, verify_walk, commit) label the ops in a profile but XLA
interleaves them, so per-part wall times cannot be read off the fused step without a profiler.
Here each part is compiled and timed separately on the same mid-decode state (the prompts plus
--warm-steps decode steps), mirroring loop.step:

    draft           drafter.begin_step -> policy.build(expander) -> drafter.end_step
    verify_forward  loop.verify_forward over the drafted tree + the LM head
    verify_walk     specdec.verify.verify (the acceptance walk)
    commit          cache.commit of the accepted path + the history scatter

and the fused step is timed too. sum(parts) exceeds the fused step by one launch and one host
sync per part and by the fusion XLA no longer does across parts; both are reported. Medians of
--repeats calls, each blocked on its result. On a GPU each part and the fused step are also
timed on the device (CUPTI, experiments.bench_tree_attention.Timer: the sum of the call's kernel
times, host gaps excluded) with their kernel counts, which is what the rooflines compare with.

Roofline per part, from the measured device-copy bandwidth (the higher of bench_decode's
host-timed copy and, on a GPU, bench_tree_attention's CUPTI-timed one) and the bf16 peak of
train.trainer.device_peak_flops (None on CPUs): verify_forward max(weights + KV read, 2 N B T
FLOPs / peak); draft (depth + 1) forwards of the drafter's weights (DraftModel: its parameters;
EAGLE: the head, plus the target's LM head for EAGLE-1/2; EarlyExit: E/L of the target; NGram:
none); verify_walk one read of the logits [B, T, V] float32; commit a read and a write of T
nodes' K/V in every layer. These are lower bounds on the bytes moved, not models of the kernels.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from drafters import DraftModel, Eagle, EarlyExit, QuantSpec
from experiments.bench_decode import STATIC_TREE, measure_copy_bandwidth
from experiments.bench_tree_attention import Timer, measure_ceilings
from experiments.scaling import common
from specdec.contract import DraftContext
from specdec.engine.generate import prepare
from specdec.engine.loop import commit_path, initial_state, step, verify_forward, walk_options
from specdec.verify import verify
from train.trainer import device_peak_flops
from trees import Chain, Static

NAME = "time_split"
PARTS = ("draft", "verify_forward", "verify_walk", "commit")


def _median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _parts(policy):
    """The step's parts as pure functions (see the module docstring), for jax.jit."""

    def draft(net, drafter, s, params, key):
        module = net.module()
        ctx = DraftContext(
            history=s.history,
            hist_len=s.hist_len,
            target=net,
            cache=s.cache,
            vocab_size=module.config.vocab_size,
        )
        root = s.history[jnp.arange(s.hist_len.shape[0]), s.hist_len - 1]
        carried = drafter.begin_step(s.drafter_state, ctx, policy)
        tree, carried = policy.build(
            drafter.expander(ctx, policy), carried, root, params, key, s.policy_state
        )
        handoff = drafter.end_step(carried, ctx)
        return tree, handoff.cache, handoff.reuse

    def forward(net, tree, cache, reuse, taps):
        module = net.module()
        hidden, cache, _ = verify_forward(module, tree, cache, reuse, taps)
        return module.logits(hidden), cache

    def walk(tree, logits, params, key):  # with the loop's options: chains walk without a loop
        return verify(tree, logits, params, key, **walk_options(policy))

    def commit(s, tree, verdict, cache):  # as the loop commits: a chain's K/V stays in place
        count = verdict.num_accepted + 1
        cache = commit_path(cache, tree, verdict, count, policy)
        offsets = jnp.arange(tree.num_nodes)[None, :]
        dest = jnp.where(
            offsets < count[:, None], s.hist_len[:, None] + offsets, s.history.shape[1]
        )
        rows = jnp.arange(s.hist_len.shape[0])[:, None]
        history = s.history.at[rows, dest].set(verdict.emitted(tree), mode="drop")
        return cache, history

    return draft, forward, walk, commit


def device_times(timer, calls: dict) -> dict:
    """{name: (median device ms, kernels per call, kernels by name)} of jitted calls
    {name: (fn, args)}, or {} without CUPTI (a CPU: the host times above are all there is)."""
    if timer is None or timer.method != "cupti":
        return {}
    out = {}
    for name, (fn, fn_args) in calls.items():
        t = timer(fn, [fn_args])
        out[name] = (t["ms"], t.get("kernels"), kernels_by_name(t.get("breakdown", [])))
    return out


def kernels_by_name(breakdown: list, top: int = 20) -> list[dict]:
    """A call's kernels [(name, ms)] grouped by name: launches and device microseconds of the
    `top` names by time, so a step's kernel count can be traced to the ops that launch them."""
    totals: dict[str, list[float]] = {}
    for name, ms in breakdown:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += 1e3 * ms
    rows = [{"name": n, "launches": c, "us": round(us, 2)} for n, (c, us) in totals.items()]
    return sorted(rows, key=lambda r: -r["us"])[:top]


def split_one(target, drafter, policy, ids, args, timer=None, **options) -> dict:
    """Per-part and fused-step seconds of one drafter x policy on `ids` (see module); `options`
    go to `prepare` (common.generate_options: QuantSpec's cache)."""
    prepared = prepare(
        target, ids, max_new_tokens=args.max_new + 64, drafter=drafter, policy=policy, **options
    )
    net, drafter, _, _, _, _, max_new, params, _, eos = prepared.args
    kw = dict(policy=prepared.policy, shape=prepared.shape)
    state = jax.jit(initial_state, static_argnames=("policy", "shape"))(*prepared.args, **kw)
    # Weights are arguments, never closed over: constants would be folded into the program.
    one = jax.jit(
        lambda net, d, max_new, params, eos, s: step(net, d, policy, max_new, params, eos, s)
    )
    step_args = (net, drafter, max_new, params, eos)
    for _ in range(args.warm_steps):
        state = one(*step_args, state)
    fused = _median_seconds(one, (*step_args, state), args.repeats)

    draft_fn, forward_fn, walk_fn, commit_fn = _parts(policy)
    taps = tuple(drafter.target_layers)
    draft, walk, commit = jax.jit(draft_fn), jax.jit(walk_fn), jax.jit(commit_fn)
    forward = jax.jit(lambda net, tree, cache, reuse: forward_fn(net, tree, cache, reuse, taps))
    key = jax.random.key(0)
    tree, cache, reuse = draft(net, drafter, state, params, key)
    logits, cache = forward(net, tree, cache, reuse)
    verdict = walk(tree, logits, params, key)
    calls = {  # part -> (jitted function, its arguments)
        "draft": (draft, (net, drafter, state, params, key)),
        "verify_forward": (forward, (net, tree, cache, reuse)),
        "verify_walk": (walk, (tree, logits, params, key)),
        "commit": (commit, (state, tree, verdict, cache)),
    }
    seconds = {part: _median_seconds(fn, a, args.repeats) for part, (fn, a) in calls.items()}
    device = device_times(timer, {"fused_step": (one, (*step_args, state)), **calls})
    extra = {}
    if device:
        extra = {
            "device_ms": {k: ms for k, (ms, _, _) in device.items()},
            "kernels": {k: n for k, (_, n, _) in device.items()},
            "kernels_by_name": {k: names for k, (_, _, names) in device.items()},
        }
    return {
        **extra,
        "seconds": seconds,
        "fused_step_s": fused,
        "sum_of_parts_s": sum(seconds.values()),
        "cache_length": float(np.mean(np.asarray(state.hist_len))),
        "tree_nodes": tree.num_nodes,
        "accepted_mean": float(np.mean(np.asarray(verdict.num_accepted))),
    }


def drafter_bytes(target, drafter) -> float:
    """Weight bytes one draft forward reads (see the module docstring)."""
    cfg, size = target.config, jnp.dtype(target.dtype).itemsize
    if isinstance(drafter, DraftModel):
        return drafter.net.config.num_params() * size
    if isinstance(drafter, Eagle):
        head = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(drafter.head.params))
        shared_lm_head = cfg.hidden_size * cfg.vocab_size if drafter.version == 1 else 0
        return (head + shared_lm_head) * size
    if isinstance(drafter, EarlyExit):
        return cfg.num_params() * size * drafter.exit_layer / cfg.num_layers
    if isinstance(drafter, QuantSpec):  # the whole target (its KV reads are left out)
        return cfg.num_params() * size
    return 0.0


def roofline(target, drafter, policy, split, batch, bandwidth, peak) -> dict:
    """Lower-bound seconds of each part (see the module docstring)."""
    cfg, size = target.config, jnp.dtype(target.dtype).itemsize
    nodes = split["tree_nodes"]
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * size
    weights = cfg.num_params() * size
    kv_read = kv_per_token * batch * split["cache_length"]
    flops = 2 * cfg.num_params() * batch * nodes
    forward = max((weights + kv_read) / bandwidth, flops / peak if peak else 0.0)
    return {
        "draft": (policy.max_depth + 1) * drafter_bytes(target, drafter) / bandwidth,
        "verify_forward": forward,
        "verify_walk": batch * nodes * cfg.vocab_size * 4 / bandwidth,
        "commit": 2 * kv_per_token * batch * nodes / bandwidth,
    }


def run(pair: common.Pair, args) -> common.Recorder:
    base = common.prompts(pair.target.tokenizer, args.prompts)
    on_cpu = jax.devices()[0].platform == "cpu"
    bandwidth = measure_copy_bandwidth((64 << 20) if on_cpu else (4 << 30))
    peak, peak_source = device_peak_flops()
    timer = None if on_cpu else Timer()
    bandwidth_source = "host-timed copy"
    if timer is not None and timer.method == "cupti":  # the higher ceiling: a lower one flatters
        device_bw, _ = measure_ceilings(timer)
        if device_bw > bandwidth:
            bandwidth, bandwidth_source = device_bw, "CUPTI-timed copy"
    if args.smoke:
        drafters = {"DraftModel": DraftModel(pair.draft)}
        records = {"DraftModel": common.describe_model(pair.draft, pair.draft_dir)}
    else:
        drafters, records = common.drafter_zoo(pair, args)
    policies = {"Chain(4)": Chain(4), f"Static({len(STATIC_TREE) + 1} nodes)": Static(STATIC_TREE)}
    if args.smoke:
        policies = {"Chain(4)": Chain(4)}
    meta = common.metadata(
        pair,
        args,
        drafters=records,
        batches=args.batches,
        temperature=0.0,
        warm_steps=args.warm_steps,
        repeats=args.repeats,
        copy_bandwidth_bytes_s=bandwidth,
        bandwidth_source=bandwidth_source,
        peak_flops=peak,
        peak_source=peak_source,
    )
    rec = common.Recorder(NAME, args, meta)
    for batch in args.batches:
        ids = [base[i % len(base)] for i in range(batch)]
        for (dname, drafter), (pname, policy) in (
            (d, p) for d in drafters.items() for p in policies.items()
        ):
            if rec.time_left() < 0:
                print(f"deadline: skipping batch {batch} {dname} {pname}")
                continue
            options = common.generate_options(dname)
            split = split_one(pair.target, drafter, policy, ids, args, timer, **options)
            bound = roofline(pair.target, drafter, policy, split, batch, bandwidth, peak)
            rec.add(
                {"batch": batch, "drafter": dname, "policy": pname, **split, "roofline_s": bound}
            )
    return rec


def build_parser():
    p = common.parser(__doc__, prompts=16, max_new=128, deadline_s=540.0)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--warm-steps", type=int, default=8, help="decode steps before timing")
    p.add_argument("--repeats", type=int, default=20)
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        args.batches, args.warm_steps, args.repeats = [1], 2, 3
    args = common.finish_args(args, prompts=2, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


if __name__ == "__main__":
    main(sys.argv[1:])
