"""The PTX nibble unpacking (kernels_pallas/nibble_ptx.py) on the CPU: the instruction lists the
GPU runs are emulated on numpy words, for every byte value, and rendered to the PTX text the
Triton kernel embeds."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import nibble_ptx as ptx


def _words(byte_values: np.ndarray) -> np.ndarray:
    """[n * 4] uint8 -> [n] little-endian uint32 words (byte 0 = element 0, as Triton packs)."""
    return byte_values.astype(np.uint8).view(np.uint32)


def _floats(regs: dict, dtype) -> np.ndarray:
    """out0, out1 [n] words -> [n * 4] values (out0: elements 0, 1; out1: 2, 3)."""
    return np.stack([regs["out0"], regs["out1"]], axis=1).view(jnp.dtype(dtype)).ravel()


ALL_PAIRS = np.meshgrid(np.arange(256), np.arange(256))  # every (upper, lower) byte pair


@pytest.mark.parametrize("high", [False, True], ids=["low-channels", "high-channels"])
def test_levels_are_16u_plus_l_for_every_byte_pair(high):
    upper, lower = (x.ravel() for x in ALL_PAIRS)
    regs = ptx.emulate(ptx.levels_program(high), upper=_words(upper), lower=_words(lower))
    up, low = (upper >> 4, lower >> 4) if high else (upper & 15, lower & 15)
    np.testing.assert_array_equal(_floats(regs, jnp.float16).astype(np.float32), 16 * up + low)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("high", [False, True], ids=["low", "high"])
def test_nibbles_for_every_byte(dtype, high):
    packed = np.arange(256 * 4) % 256
    regs = ptx.emulate(ptx.nibbles_program(dtype, high), packed=_words(packed))
    want = packed >> 4 if high else packed & 15
    np.testing.assert_array_equal(_floats(regs, dtype).astype(np.float32), want)


def test_a_wrong_truth_table_is_caught():
    """The emulator runs lop3's table bit by bit: a wrong table gives wrong levels."""
    program = [
        ptx.Instr(i.op, i.dst, (*i.srcs[:3], 0xE2)) if i.op == "lop3" else i
        for i in ptx.levels_program(False)
    ]
    upper, lower = (x.ravel() for x in ALL_PAIRS)
    regs = ptx.emulate(program, upper=_words(upper), lower=_words(lower))
    got = _floats(regs, jnp.float16).astype(np.float32)
    assert not np.array_equal(got, 16 * (upper & 15) + (lower & 15))


def test_render_numbers_outputs_then_inputs_and_declares_temporaries():
    text = ptx.render(ptx.levels_program(True), ["out0", "out1"], ["upper", "lower"])
    declared = set(re.search(r"\.reg \.b32 ([^;]*);", text).group(1).replace(" ", "").split(","))
    used = set(re.findall(r"nib_\w+", text.split(";", 1)[1]))
    assert used == declared
    assert re.search(r"lop3\.b32 nib_c, \$2, nib_t,", text)  # upper is $2, lower $3
    assert re.search(r"shr\.u32 nib_t, \$3,", text)
    assert re.search(r"fma\.rn\.f16x2 \$0,", text) and re.search(r"fma\.rn\.f16x2 \$1,", text)


def test_quant_kernel_once_runs_both_unpackings_in_interpret_mode(capsys):
    """The profiler driver (experiments/quant_kernel_once.py) on the CPU: one launch per
    unpacking, in order (interpret mode runs the element-wise path for both)."""
    from experiments import quant_kernel_once

    quant_kernel_once.main(["--slots", "512", "--batch", "1", "--views", "int4", "--interpret"])
    launched = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("launched")
    ]
    assert [("ptx_unpack=True" in line) for line in launched] == [True, False]
