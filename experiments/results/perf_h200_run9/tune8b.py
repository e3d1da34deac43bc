"""Run 9 call 6: the 8B one-row projections (q/k/v, o, down) re-swept by bench_matvec now that rows
are padded in the wrapper (run 7's dot tilings with K splits computed wrong answers then), and the
8B batch-1 step with the winners. `pick SWEEP_JSON OUT_JSON`: the best correct config per
problem where it beats the path the model takes today (the tuned tiling, else XLA's dot) by >= 3%.
`run OVERRIDES_JSON|base profile_step args...`: TUNED_BLOCKS updated from the file, then
profile_step.main."""

import json
import sys
from pathlib import Path

from kernels_pallas import matvec_triton as mt


def pick(sweep_json, out_json):
    chosen = {}
    for row in json.loads(Path(sweep_json).read_text())["problems"]:
        key = (row["M"], row["K"], row["N"])
        today = row["default"]["us"] if mt.pays(*key) else row["xla"]["us"]
        best = row.get("best")
        line = f"{key}: today {today:.2f} us ({'kernel' if mt.pays(*key) else 'xla'})"
        if best and best["us"] < 0.97 * today:
            chosen[repr(key)] = best["blocks"]
            line += f", best {best['us']:.2f} us {best['name']} -> taken"
        else:
            line += f", best {best and round(best['us'], 2)} -> kept"
        print(line, flush=True)
    Path(out_json).write_text(json.dumps(chosen, indent=1))


def run(overrides, argv):
    if overrides != "base":
        for key, blocks in json.loads(Path(overrides).read_text()).items():
            mt.TUNED_BLOCKS[tuple(json.loads(key.replace("(", "[").replace(")", "]")))] = (
                mt.MatvecBlocks(**blocks)
            )
    print("TUNED_BLOCKS", mt.TUNED_BLOCKS, flush=True)
    from experiments import profile_step

    profile_step.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "pick":
        pick(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[2], sys.argv[3:])
