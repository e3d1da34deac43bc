"""Every experiment notebook executes headless in smoke mode (tiny CPU models), so a notebook
that breaks fails CI. Result files go to a temporary directory, never into the checkout."""

import time

import nbformat
import pytest

from experiments.notebooks import make_notebooks, run_notebooks


def test_the_notebooks_are_generated_from_make_notebooks():
    """The committed notebooks' cells are exactly the generator's (outputs aside)."""
    paths = run_notebooks.notebooks()
    assert [p.stem for p in paths] == list(make_notebooks.NOTEBOOKS)
    for path in paths:
        module, intro, plot = make_notebooks.NOTEBOOKS[path.stem]
        expected = make_notebooks.build(path.stem, module, intro, plot)
        actual = nbformat.read(path, as_version=4)
        assert [c.source for c in actual.cells] == [c.source for c in expected.cells], path.name


@pytest.mark.slow
def test_every_notebook_executes_in_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_RESULTS_DIR", str(tmp_path))
    for name, value in run_notebooks.smoke_environment().items():
        monkeypatch.setenv(name, value)
    start = time.perf_counter()
    times = run_notebooks.run_all(run_notebooks.notebooks(), save=False, jobs=2)
    print(f"notebooks: {times}; total {time.perf_counter() - start:.0f}s")
    written = sorted(p.name for p in tmp_path.glob("*_smoke.json"))
    assert len(written) == len(make_notebooks.NOTEBOOKS), written
