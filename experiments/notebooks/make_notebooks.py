"""Write the experiment notebooks (NN_name.ipynb) from the cell sources below, outputs empty.

    PYTHONPATH=. python experiments/notebooks/make_notebooks.py

Each notebook loads its experiment's result (experiments.scaling.common.notebook_result: with
SPECDEC_SMOKE=1 it first runs the experiment's smoke function), fits and plots. The experiment
code lives in experiments/scaling/; a notebook holds only loading, fitting and plotting.
"""

import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = """\
import matplotlib.pyplot as plt
{numpy}
from experiments.scaling import {imports}

result = common.notebook_result({module})
meta, rows = result["meta"], result["rows"]
kind = "SMOKE (tiny CPU models: checks the code, says nothing about scaling)"
print(result["path"], "-", kind if result["smoke"] else "GPU result", "-", len(rows), "rows")
if meta.get("annotation"):  # what was learnt about the run after it (kept in the result file)
    print("annotation:", meta["annotation"])
"""

NOTEBOOKS = {
    "01_budget": (
        "budget",
        """\
# 1. Acceptance and speedup against the target compute budget

Every tree policy at tree sizes (verify width, root included) from 2 to 128, at T = 0 and T = 1:
RSD's fixed-budget protocol, so policies are compared at equal target compute. tau counts the
bonus token; speedup is total new tokens over total wall time against plain decoding of the same
target at the same temperature in the same run. The policies and how each is sized are in
`experiments/scaling/budget.py`.

    make experiments-smoke                                                  # CPU smoke
    PYTHONPATH=. python -m experiments.scaling.budget --out-dir $OUT       # GPU

On the H200, solid lines are this script's own run (the `small` pair it trains, DraftModel
drafts; T = 0 and T = 1 in two calls, see the result's `meta.run`); dashed ones are an EAGLE-3
head from `experiments/gpu_speculation.py --phases policies` (converted with
`python -m experiments.scaling.budget --from-policy-run SPEC_JSON policies_eagle3`), a second run
with its own target (the captions of each part are printed below the figure).
""",
        """\
invalid = [r for r in rows if "invalid" in r]  # marked after the run, with the reason
for r in invalid:
    print(f"left out: {r['policy']} budget {r['budget']} T={r['temperature']:g}: {r['invalid']}")
rows = [r for r in rows if "invalid" not in r]
temps = sorted({r["temperature"] for r in rows})
fig, axes = plt.subplots(len(temps), 2, figsize=(12, 4.2 * len(temps)), squeeze=False)
drafters = list(dict.fromkeys(r.get("drafter", meta["drafter"]) for r in rows))
for i, t in enumerate(temps):
    mine = [r for r in rows if r["temperature"] == t]
    for d, drafter in enumerate(drafters):
        own = [r for r in mine if r.get("drafter", meta["drafter"]) == drafter]
        for name in dict.fromkeys(r["policy"] for r in own):
            sel = sorted((r for r in own if r["policy"] == name), key=lambda r: r["budget"])
            budgets = [r["budget"] for r in sel]
            color = f"C{budget.POLICIES.index(name)}"  # one color per policy in every panel
            style = "o-" if d == 0 else "s--"  # one line style per drafter
            label = name if d == 0 else f"{name} ({drafter})"
            axes[i, 0].plot(budgets, [r["tau"] for r in sel], style, color=color, label=label)
            axes[i, 1].plot(budgets, [r["speedup"] for r in sel], style, color=color, label=label)
    axes[i, 0].set_ylabel(f"tau (tokens per target forward, bonus incl.), T = {t:g}")
    axes[i, 1].set_ylabel(f"speedup vs plain, T = {t:g}")
    axes[i, 1].axhline(1.0, color="gray", lw=0.8)
    for ax in axes[i]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("target budget (tree nodes, root included)")
        ax.grid(alpha=0.3)
    axes[i, 0].legend(fontsize=8)
temperatures = " and ".join(f"{t:g}" for t in temps)
shown = drafters[0] + "".join(f"; {d} dashed (its own target and run)" for d in drafters[1:])
title = common.caption(meta, drafter=shown, temperature=temperatures, batch=meta["batch"])
fig.suptitle(title, fontsize=8)
fig.tight_layout()
plt.show()
for part in result.get("parts", [])[1:]:  # the other runs' own models
    print(part["path"], {k: v.get("summary", v) for k, v in part["meta"]["models"].items()})
for r in rows:
    print(
        f"{r.get('drafter', meta['drafter']):10s} T={r['temperature']:g} budget {r['budget']:4d} "
        f"{r['policy']:9s} nodes {r['nodes']:4d} tau {r['tau']:.2f} speedup {r['speedup']:.2f}x"
    )
""",
    ),
    "02_temperature": (
        "temperature",
        """\
# 2. Acceptance against temperature, with and without top-p

Each drafter (DraftModel, NGram prompt lookup, EarlyExit, EAGLE-3) drafts a chain of argmax
candidates, verified exactly at every temperature. Solid: no top-p; dashed: top-p 0.9. Error
bars: 95% intervals from resampling prompts. tau counts the bonus token.

    PYTHONPATH=. python -m experiments.scaling.temperature --out-dir $OUT   # GPU
""",
        """\
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for k, name in enumerate(dict.fromkeys(r["drafter"] for r in rows)):
    for top_p, style in ((1.0, "-"), (0.9, "--")):
        sel = sorted(
            (r for r in rows if r["drafter"] == name and r["top_p"] == top_p),
            key=lambda r: r["temperature"],
        )
        if not sel:
            continue
        temps = [r["temperature"] for r in sel]
        ci = fit.ratio_ci([r["emitted"] for r in sel], [r["forwards"] for r in sel])
        tau = np.array([r["tau"] for r in sel])
        label = f"{name}" + ("" if top_p == 1.0 else f", top-p {top_p:g}")
        axes[0].errorbar(
            temps,
            tau,
            yerr=[tau - ci[:, 0], ci[:, 1] - tau],
            fmt="o" + style,
            color=f"C{k}",
            label=label,
            capsize=2,
        )
        first = [r["first_acceptance"] for r in sel]
        axes[1].plot(temps, first, "o" + style, color=f"C{k}", label=label)
axes[0].set_ylabel("tau (tokens per target forward, bonus included)")
axes[1].set_ylabel("P(first draft accepted)")
for ax in axes:
    ax.set_xlabel("temperature")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=7)
fig.suptitle(common.caption(meta, policy=meta["policy"], batch=meta["batch"]), fontsize=8)
fig.tight_layout()
plt.show()
""",
    ),
    "03_training_tokens": (
        "training_tokens",
        """\
# 3. Acceptance against draft training tokens: the log-linear law

Fresh drafters (an EAGLE-3 head; the pair's DraftModel architecture, distilled) trained on
1/16 .. all of a full run's tokens, each evaluated by tau (bonus included) of Chain(4) at T = 0.
Fit: tau = a + b log10(tokens), 95% intervals from resampling prompts (paired across points).

    PYTHONPATH=. python -m experiments.scaling.training_tokens --out-dir $OUT   # GPU
""",
        """\
fig, ax = plt.subplots(figsize=(8, 5))
laws = fit.plot_law(ax, rows, "train_tokens")
ax.set_xlabel("draft training tokens (steps x batch x sequence length)")
ax.legend(fontsize=8, title="tau = a + b log10(tokens), 95% CI")
fig.suptitle(common.caption(meta, policy=meta["policy"], batch=meta["batch"]), fontsize=8)
fig.tight_layout()
plt.show()
for name, law in laws.items():
    print(f"{name}: {law.describe('tau', 'tokens')}")
""",
    ),
    "04_capacity": (
        "capacity",
        """\
# 4. Acceptance against draft capacity: the log-linear law

EAGLE-1/2 heads of 1, 2 and 4 decoder layers and DraftModels of several widths, trained for the
same number of steps; capacity is the trainable parameter count. tau (bonus included) of Chain(4)
at T = 0; fit tau = a + b log10(params), 95% intervals from resampling prompts.

    PYTHONPATH=. python -m experiments.scaling.capacity --out-dir $OUT   # GPU
""",
        """\
fig, ax = plt.subplots(figsize=(8, 5))
laws = fit.plot_law(ax, rows, "params")
ax.set_xlabel("draft trainable parameters")
ax.legend(fontsize=8, title="tau = a + b log10(params), 95% CI")
fig.suptitle(common.caption(meta, policy=meta["policy"], batch=meta["batch"]), fontsize=8)
fig.tight_layout()
plt.show()
for name, law in laws.items():
    print(f"{name}: {law.describe('tau', 'params')}")
""",
    ),
    "05_batch": (
        "batch",
        """\
# 5. Throughput and speedup against batch size, with and without trees

Plain decoding, the DraftModel with a chain of 4 (no tree) and with a 10-node static tree, at
batch sizes 1 to 64, T = 0. tokens/s are all rows' new tokens over wall time (compilation
excluded); speedup is against plain decoding at the same batch size in the same run.

    PYTHONPATH=. python -m experiments.scaling.batch --out-dir $OUT   # GPU
""",
        """\
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for name in dict.fromkeys(r["config"] for r in rows):
    sel = sorted((r for r in rows if r["config"] == name), key=lambda r: r["batch"])
    batches = [r["batch"] for r in sel]
    axes[0].plot(batches, [r["tokens_per_s"] for r in sel], "o-", label=name)
    axes[1].plot(batches, [r["speedup"] for r in sel], "o-", label=name)
axes[0].set_ylabel("new tokens / s (all rows)")
axes[0].set_yscale("log")
axes[1].set_ylabel("speedup vs plain at the same batch")
axes[1].axhline(1.0, color="gray", lw=0.8)
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
batches = ", ".join(str(b) for b in sorted({r["batch"] for r in rows}))
fig.suptitle(common.caption(meta, temperature=0, batch=batches), fontsize=8)
fig.tight_layout()
plt.show()
""",
    ),
    "06_depth": (
        "depth",
        """\
# 6. Acceptance by depth and the distribution of accepted lengths, per drafter

Each drafter drafts a chain of argmax candidates. Left: P(draft at depth d accepted | depth d - 1
was). Right: the share of steps that emitted n tokens (accepted drafts + the bonus token; tau is
its mean).

    PYTHONPATH=. python -m experiments.scaling.depth --out-dir $OUT   # GPU
""",
        """\
temps = sorted({r["temperature"] for r in rows})
fig, axes = plt.subplots(len(temps), 2, figsize=(12, 4.2 * len(temps)), squeeze=False)
names = list(dict.fromkeys(r["drafter"] for r in rows))
width = 0.8 / max(len(names), 1)
for i, t in enumerate(temps):
    for k, name in enumerate(names):
        sel = [r for r in rows if r["drafter"] == name and r["temperature"] == t]
        if not sel:
            continue
        r = sel[0]
        accepted = [np.nan if a is None else a for a in r["acceptance_by_depth"]]  # None: no data
        depths = np.arange(1, len(accepted) + 1)
        axes[i, 0].plot(depths, accepted, "o-", color=f"C{k}", label=name)
        emit = np.array(r["emit_hist"]).sum(axis=0)
        share = emit / max(emit.sum(), 1)
        lengths = np.arange(1, len(share) + 1)
        axes[i, 1].bar(
            lengths + (k - len(names) / 2 + 0.5) * width,
            share,
            width,
            color=f"C{k}",
            label=f"{name} (tau {r['tau']:.2f})",
        )
    axes[i, 0].set_xlabel("draft depth d")
    axes[i, 0].set_ylabel(f"P(d accepted | d - 1 accepted), T = {t:g}")
    axes[i, 1].set_xlabel("tokens emitted per step (accepted drafts + bonus)")
    axes[i, 1].set_ylabel(f"share of steps, T = {t:g}")
    for ax in axes[i]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
temperatures = " and ".join(f"{t:g}" for t in temps)
title = common.caption(meta, policy=meta["policy"], temperature=temperatures, batch=meta["batch"])
fig.suptitle(title, fontsize=8)
fig.tight_layout()
plt.show()
""",
    ),
    "07_time_split": (
        "time_split",
        """\
# 7. Where the time of a step goes, against each part's roofline

Each part of a decode step (draft, verify forward, verify walk, commit) compiled and timed
separately on the same mid-decode state; the fused step (one XLA program, as the loop runs it) is
timed too, so the gap between the sum of parts and the fused step shows what separate timing
adds. Hatched: each part's roofline lower bound (bytes / measured copy bandwidth, or FLOPs /
peak); see `experiments/scaling/time_split.py` for what the bounds count. On a CPU the bound uses
DRAM bandwidth while tiny models sit in caches, so measured times may fall below it.

    PYTHONPATH=. python -m experiments.scaling.time_split --out-dir $OUT   # GPU
""",
        """\
parts = time_split.PARTS
# Device times (CUPTI: kernels only, host gaps excluded) where the run had them, else host times.
device = all("device_ms" in r for r in rows)
measured = lambda r, p: r["device_ms"][p] if device else 1e3 * r["seconds"][p]
bound_ms = lambda r, p: 1e3 * r["roofline_s"][p]
fused = lambda r: r["device_ms"]["fused_step"] if device else 1e3 * r["fused_step_s"]
batches = sorted({r["batch"] for r in rows})
per = max(sum(r["batch"] == b for r in rows) for b in batches)
fig, axes = plt.subplots(
    len(batches), 1, figsize=(max(6, 1.4 * per), 4 * len(batches)), squeeze=False
)
for ax, batch in zip(axes[:, 0], batches, strict=True):
    sub = [r for r in rows if r["batch"] == batch]
    x = np.arange(len(sub))
    hatched = {"alpha": 0.4, "hatch": "//"}
    for side, bound in ((-0.2, False), (0.2, True)):
        bottom = np.zeros(len(sub))
        for k, part in enumerate(parts):
            ms = np.array([(bound_ms if bound else measured)(r, part) for r in sub])
            label = None if bound else f"{part} ({'device' if device else 'host'} time)"
            style = hatched if bound else {}
            ax.bar(x + side, ms, 0.4, bottom=bottom, color=f"C{k}", label=label, **style)
            bottom += ms
    ax.plot(x - 0.2, [fused(r) for r in sub], "k_", ms=30, label="fused step")
    ax.set_xticks(x, [f"{r['drafter']}\\n{r['policy']}" for r in sub], fontsize=7)
    ax.set_ylabel(f"batch {batch}: ms per step")
    ax.set_title("left: measured parts; right, hatched: roofline lower bound", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
fig.suptitle(common.caption(meta, temperature=0, batch=", ".join(map(str, batches))), fontsize=8)
fig.tight_layout()
plt.show()
for r in rows:
    split = ", ".join(f"{p} {1e3 * r['seconds'][p]:.3f}" for p in parts)
    print(
        f"B={r['batch']} {r['drafter']} {r['policy']}: host {split} ms; sum "
        f"{1e3 * r['sum_of_parts_s']:.3f} ms, fused step {1e3 * r['fused_step_s']:.3f} ms"
    )
    if "device_ms" in r:
        dev = ", ".join(f"{p} {r['device_ms'][p]:.3f} ({r['kernels'][p]})" for p in parts)
        print(
            f"    device (kernels): {dev}; fused step {r['device_ms']['fused_step']:.3f} ms "
            f"({r['kernels']['fused_step']} kernels)"
        )
""",
    ),
}

SCYLLA = """\
## Against Scylla

Scylla ("Scaling Laws for Speculative Decoding", arXiv:2505.07858, Theorems 1.1 and 1.2)
reports the draft's acceptance growing log-linearly with its pretraining tokens and its capacity,
on Llama-2/3 and Qwen2.5 targets with billion-parameter-scale drafts. Our models and data are far
smaller, so we compare the form of the law (the sign and interval of our slope b), not its value.
The cell below says, per drafter, whether our data agree with growth in {axis}: a slope whose
95% interval lies above zero with a good fit (R^2 >= 0.8) is consistent; above zero with a poor
fit is growth but not evidence for the log-linear form; an interval containing zero does not
resolve it; one below zero disagrees.
"""

VERDICT = """\
for name, law in laws.items():
    low, high = law.slope_ci
    if low > 0 and law.r2 >= 0.8:
        verdict = "consistent with Scylla's log-linear growth"
    elif low > 0:
        verdict = (
            f"grows with {axis}, but the points are a poor log-linear fit "
            f"(R^2 {{law.r2:.2f}}): not evidence for the law's form"
        )
    elif high < 0:
        verdict = "DISAGREES with Scylla: acceptance falls with {axis}"
    else:
        verdict = "not resolved: the interval contains zero"
    note = " (smoke data: meaningless)" if result["smoke"] else ""
    slope = f"b = {{law.slope:.3f}} per decade, 95% CI [{{low:.3f}}, {{high:.3f}}]"
    print(f"{{name}}: {{slope}}: {{verdict}}{{note}}")
"""


def setup(module: str, plot: str) -> str:
    """The loading cell, importing only what the plotting cell uses (ruff lints notebooks)."""
    imports = sorted({"common", module} | ({"fit"} if "fit." in plot else set()))
    numpy = "import numpy as np\n" if "np." in plot else ""
    return SETUP.format(module=module, imports=", ".join(imports), numpy=numpy).strip()


def build(name: str, module: str, intro: str, plot: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    nb.metadata["language_info"] = {"name": "python"}
    cells = [
        nbformat.v4.new_markdown_cell(intro.strip()),
        nbformat.v4.new_code_cell(setup(module, plot)),
        nbformat.v4.new_code_cell(plot.strip()),
    ]
    axis = {"training_tokens": "training tokens", "capacity": "capacity"}.get(module)
    if axis:
        cells.append(nbformat.v4.new_markdown_cell(SCYLLA.format(axis=axis).strip()))
        cells.append(nbformat.v4.new_code_cell(textwrap.dedent(VERDICT.format(axis=axis)).strip()))
    for i, cell in enumerate(cells):
        cell["id"] = f"{name}-{i}"  # stable ids: regenerating leaves the files unchanged
    nb.cells = cells
    return nb


def main() -> None:
    for name, (module, intro, plot) in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(name, module, intro, plot), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
