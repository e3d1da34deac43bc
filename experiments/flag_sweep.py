"""XLA flag sets against a decode step: `profile_step.py` in one child process per
(flags, model, batch) (XLA reads its flags once, at start), one summary table; `--step-args` passes
more of profile_step's arguments (a long prompt, a cache mode, a drafter, wall-clock timing).

    # on the GPU machine:
    PYTHONPATH=. python3 experiments/flag_sweep.py --models small --out $OUT/flags
    # CPU smoke (tiny model, the flag sets that XLA:CPU accepts are not these: runs `default`):
    PYTHONPATH=. .venv/bin/python experiments/flag_sweep.py --smoke --out /tmp/flags

Writes <out>/flags.json and flags.md (device / wall ms per step, kernels per step, per variant)
and each child's profile under <out>/<label>.json. A child that fails (a flag this XLA does not
know is fatal at start) is recorded with its stderr tail.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from specdec import xla_flags

CMDBUF = " ".join(xla_flags.COMMAND_BUFFER_FLAGS)
NO_TRITON_GEMM = "--xla_gpu_enable_triton_gemm=false"
EXHAUSTIVE = "--xla_gpu_exhaustive_tiling_search=true"

# label -> XLA_FLAGS, exactly (each child runs with SPECDEC_COMMAND_BUFFERS=0: "default" is XLA's
# defaults, without the command-buffer flags `import specdec` adds, specdec/xla_flags.py).
# (jax 0.11.2's XLA has no --xla_gpu_enable_dot_strength_reduction: the matrix-vector rewrite
# behind the small step's multiply + reduce pairs cannot be turned off.)
VARIANTS = {
    "default": "",
    "cmdbuf": CMDBUF,  # whole while loops as CUDA graphs (specdec's default since run 8)
    "no_triton_gemm": NO_TRITON_GEMM,  # cuBLAS for every GEMM
    "exhaustive": EXHAUSTIVE,  # the GEMM autotuner tries every Triton tiling (split-K for GEMVs)
}


def run_child(
    out: Path,
    label: str,
    flags: str,
    model: str,
    batch: int,
    smoke: bool,
    timeout,
    step_args: tuple[str, ...] = (),
):
    env = dict(os.environ, XLA_FLAGS=flags, SPECDEC_COMMAND_BUFFERS="0")  # exactly `flags`
    command = (
        [
            sys.executable,
            str(Path(__file__).with_name("profile_step.py")),
            "--model",
            model,
            "--batch",
            str(batch),
            "--label",
            label,
            "--out",
            str(out),
        ]
        + (["--smoke"] if smoke else [])
        + list(step_args)
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = done.returncode, done.stderr[-600:]
    except subprocess.TimeoutExpired:
        rc, tail = "timeout", ""
    row = dict(label=label, model=model, batch=batch, xla_flags=flags, rc=rc)
    row["seconds"] = round(time.perf_counter() - start, 1)
    path = out / f"{label}.json"
    if rc == 0 and path.exists():
        prof = json.loads(path.read_text())
        keys = ("device_ms_per_step", "wall_ms_per_step", "kernels_per_step", "method")
        for key in (*keys, "history_sha256"):
            row[key] = prof.get(key)
        row["top"] = prof.get("by_name", [])[:8]
        row["by_phase_mean"] = prof.get("by_phase_mean")
    else:
        row["error"] = tail
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | B | flags | device ms/step | wall ms/step | kernels/step | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda x: "" if x is None else f"{x:.3f}"
        note = "" if r["rc"] == 0 else f"rc {r['rc']}: {r.get('error', '')[-120:]}"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['label'].split('__')[0]} | "
            f"{fmt(r.get('device_ms_per_step'))} | {fmt(r.get('wall_ms_per_step'))} | "
            f"{r.get('kernels_per_step') or ''} | {note.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small"], help="small and/or 8b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--child-timeout", type=float, default=150.0)
    parser.add_argument("--deadline-s", type=float, default=540.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--step-args",
        default="",
        help='more profile_step.py arguments for every child, e.g. "--wall --prompt-len 3968 '
        '--kv-cache int8-hierarchical --drafter quantspec --depth 5"',
    )
    parser.add_argument("--tag", default="", help="appended to each child's label")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = ["default"] if args.smoke else args.variants
    end = time.perf_counter() + args.deadline_s
    rows = []
    for model in args.models:
        for batch in args.batches:
            for name in variants:
                left = end - time.perf_counter()
                if left < 30:
                    rows.append(dict(label=name, model=model, batch=batch, rc="skipped"))
                    continue
                label = f"{name}__{model}_b{batch}{args.tag}"
                timeout = min(args.child_timeout, left - 5)
                row = run_child(
                    args.out,
                    label,
                    VARIANTS[name],
                    model,
                    batch,
                    args.smoke,
                    timeout,
                    tuple(shlex.split(args.step_args)),
                )
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "top"}), flush=True)
                (args.out / "flags.json").write_text(json.dumps(rows, indent=1))
                (args.out / "flags.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
