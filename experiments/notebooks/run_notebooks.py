"""Execute the experiment notebooks headless (nbclient), in smoke mode or on the saved results.

    PYTHONPATH=. python experiments/notebooks/run_notebooks.py --smoke          # CPU, minutes
    PYTHONPATH=. python experiments/notebooks/run_notebooks.py --save           # GPU results,
                                                                                # outputs kept

--smoke sets SPECDEC_SMOKE=1 for the kernels, so each notebook first runs its experiment's smoke
function (tiny CPU models), and the CPU XLA flags of experiments.scaling.common. --save writes
the executed notebooks (outputs and figures) back in place; without it they are only checked.
Notebooks run --jobs at a time, each in its own kernel.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def notebooks() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, *, save: bool, timeout: int = 900) -> float:
    """Run every cell of `path` in a fresh kernel (cwd: the repository); seconds taken."""
    start = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()
    if save:
        nbformat.write(nb, path)
    return time.perf_counter() - start


def smoke_environment() -> dict[str, str]:
    """What a smoke kernel inherits (kernels copy this process's environment): smoke mode, the
    CPU backend and cheap XLA:CPU compiles (flags already set are kept)."""
    from experiments.scaling.common import CPU_XLA_FLAGS, SMOKE_ENV

    return {
        SMOKE_ENV: "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", CPU_XLA_FLAGS),
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_all(paths: list[Path], *, save: bool, jobs: int) -> dict[str, float]:
    """{notebook name: seconds}, in the current environment; raises the first notebook's error
    after all have finished."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {p.name: pool.submit(execute, p, save=save) for p in paths}
    return {name: future.result() for name, future in futures.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="SPECDEC_SMOKE=1: tiny CPU models")
    p.add_argument("--save", action="store_true", help="write outputs into the notebooks")
    p.add_argument("--jobs", type=int, default=2, help="notebooks executed at a time")
    p.add_argument("names", nargs="*", help="notebook files (default: all NN_*.ipynb here)")
    args = p.parse_args(argv)
    paths = [Path(n).resolve() for n in args.names] or notebooks()
    if args.smoke:
        os.environ.update(smoke_environment())
    else:
        os.environ.pop("SPECDEC_SMOKE", None)
    times = run_all(paths, save=args.save, jobs=args.jobs)
    for name, seconds in times.items():
        print(f"{name}: executed in {seconds:.0f}s")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
