"""Every experiment notebook executes headless in smoke mode (tiny CPU models), so a notebook
that breaks fails CI. Result files go to a temporary directory, never into the checkout."""

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
@pytest.mark.parametrize("path", run_notebooks.notebooks(), ids=lambda p: p.stem)
def test_notebook_executes_in_smoke_mode(path, tmp_path, monkeypatch):
    """One test per notebook, so that xdist spreads them over its workers."""
    monkeypatch.setenv("SPECDEC_RESULTS_DIR", str(tmp_path))
    for name, value in run_notebooks.smoke_environment().items():
        monkeypatch.setenv(name, value)
    seconds = run_notebooks.execute(path, save=False)
    print(f"{path.name}: {seconds:.0f}s")
    written = sorted(p.name for p in tmp_path.glob("*_smoke.json"))
    assert len(written) == 1, written  # the notebook's own smoke results
