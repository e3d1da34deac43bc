"""The README's Python blocks run as written, and its command line matches the parser.

As the README says: the blocks run top to bottom in one namespace, against the tiny reference
pair (trained on first use and cached under artifacts/reference/, shared with the demo and
tests/test_cli.py), with `path/to/hf_checkpoint` standing for its target directory and
`path/to/small_lm` for its draft directory.
"""

import re
from pathlib import Path

import pytest

from specdec.cli import main
from train.reference import reference_pair

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDERS = ("path/to/hf_checkpoint", "path/to/small_lm")  # -> target, draft directories


def blocks(language: str) -> list[str]:
    """The README's fenced ```<language> blocks, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), re.M | re.S)


@pytest.fixture(scope="module")
def python_blocks() -> list[str]:
    target_dir, draft_dir = reference_pair("tiny")
    found = blocks("python")
    text = "\n".join(found)
    for placeholder in PLACEHOLDERS:
        assert placeholder in text, f"the README no longer uses {placeholder!r}; update this test"
    substituted = [
        block.replace(PLACEHOLDERS[0], str(target_dir)).replace(PLACEHOLDERS[1], str(draft_dir))
        for block in found
    ]
    assert not any("path/to/" in block for block in substituted)
    return substituted


def test_readme_python_blocks_run_in_order(python_blocks):
    assert len(python_blocks) >= 3  # the API, speculative decoding and training blocks
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(python_blocks):
        code = compile(block, f"README.md python block {index + 1}", "exec")
        exec(code, namespace)
    # The last generate call (speculative, sampled) really decoded the README's prompts.
    out = namespace["out"]
    assert out.tokens.shape[0] == len(namespace["ids"]) and (out.lengths > 0).all()
    assert all(isinstance(text, str) for text in namespace["texts"])


def test_readme_command_line_matches_the_parser(capsys):
    """Every --flag the README shows for `specdec generate` exists, and none is left out."""
    (usage,) = [block for block in blocks("bash") if "specdec generate" in block]
    assert main(["generate", "--help"]) == 0
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out)) - {"--help"}
    assert set(re.findall(r"--[a-z][a-z0-9-]*", usage)) == flags


def test_every_environment_setting_is_in_the_readme_table():
    """Each SPECDEC_* variable the code reads has a row in the README's settings table."""
    root = README.parent
    sources = [
        path
        for folder in ("specdec", "drafters", "trees", "kernels_pallas", "train", "experiments")
        for path in (root / folder).rglob("*.py")
        if "results" not in path.parts
    ]
    used = {name for path in sources for name in re.findall(r"SPECDEC_[A-Z_]+", path.read_text())}
    table = README.read_text().split("## Settings (environment variables)")[1].split("\n## ")[0]
    listed = set(re.findall(r"^\| `(SPECDEC_[A-Z_]+)`", table, re.M))
    assert used, "no SPECDEC_ variable found: has the code moved?"
    assert used <= listed, f"not in the README's settings table: {sorted(used - listed)}"
