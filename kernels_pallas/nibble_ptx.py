"""Nibble planes to float16 / bfloat16 matrix operands with a few PTX bit instructions per 32-bit
word (Triton kernels; `pltriton.elementwise_inline_asm`, four bytes per asm instance).

Unpacked element by element, a nibble costs 3-4 integer instructions (mask or shift, widen, OR
with the exponent bits), and Hopper issues integer instructions at half its float rate: in the
quantised-KV attention kernel that was a third of all instructions (Nsight Compute, H200,
B = 8, S = 32k, INT8 view: 201.7 M -> 139.4 M warp instructions, 0.388 -> 0.286 ms with this
module; experiments/results/quantspec_h200_run6). Here one instruction handles four bytes:
`lop3` (any three-input bit function) splices nibbles, `prmt` (byte permute) places each byte
under a constant exponent byte, which makes the 16-bit float `offset + n` exactly, and one packed
fused multiply-add per two values takes the offset off. Per four bytes: INT4 plane 11
instructions for 8 operands, INT8 (two planes, one 8-bit level per channel) 12 for 8, besides
loop-invariant constant moves.

Each program is a list of `Instr`, rendered to PTX by `render` and run on numpy words by
`emulate`, so the CPU tests check the very instructions the GPU runs (bit constants, lop3 truth
tables, prmt selectors).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import triton as pltriton

# The 16-bit float whose high byte is `magic` and low byte a value c < 256 (f16) or < 128 (bf16)
# is offset + c, exactly: f16 0x64__ = 1024 + c, bf16 0x43__ = 128 + c. Subtracting the offset
# (one fused multiply-add per two values: x * 1 - offset) leaves c, exactly.
# dtype -> (magic byte, offset, the 16-bit pattern of 1.0, of -offset)
MAGIC = {
    jnp.dtype(jnp.float16): (0x64, 1024.0, 0x3C00, 0xE400),
    jnp.dtype(jnp.bfloat16): (0x43, 128.0, 0x3F80, 0xC300),
}

# lop3 truth table of (a & c) | (b & ~c): a -> 0xF0, b -> 0xCC, c -> 0xAA.
_SELECT_A_WHERE_C = (0xF0 & 0xAA) | (0xCC & ~0xAA & 0xFF)  # 0xE4
# prmt selectors: bytes 0-3 are the first source, 4-7 the second (the constant exponent bytes).
_LOW_PAIR = 0x4140  # bytes (x0, m, x1, m): the 16-bit floats of bytes 0 and 1
_HIGH_PAIR = 0x4342  # bytes (x2, m, x3, m): bytes 2 and 3


@dataclasses.dataclass(frozen=True)
class Instr:
    """One PTX instruction: `op` in OPS, a destination register and sources (register names or
    int immediates)."""

    op: str
    dst: str
    srcs: tuple


def _lop3(a, b, c, lut):
    out = np.zeros_like(a)
    for bit in range(8):  # the LUT's bit i is f at (a, b, c) = the bits of (0xF0, 0xCC, 0xAA) at i
        if lut >> bit & 1:
            ta, tb, tc = (0xF0 >> bit) & 1, (0xCC >> bit) & 1, (0xAA >> bit) & 1
            out |= (a if ta else ~a) & (b if tb else ~b) & (c if tc else ~c)
    return out


def _fma_pairs(dtype):
    """a * b + c on the two 16-bit floats of each word (round to nearest)."""
    dtype = jnp.dtype(dtype)

    def halves(w):
        return [((w >> (16 * i)) & 0xFFFF).astype(np.uint16).view(dtype).astype(np.float64)
                for i in range(2)]  # fmt: skip

    def fma(a, b, c):
        out = np.zeros_like(a)
        for i, (x, y, z) in enumerate(zip(halves(a), halves(b), halves(c), strict=True)):
            bits = (x * y + z).astype(dtype).view(np.uint16).astype(np.uint32)
            out |= bits << (16 * i)
        return out

    return fma


def _prmt(a, b, selector):
    source = [(x >> (8 * i)) & 0xFF for x in (a, b) for i in range(4)]  # bytes 0-7
    out = np.zeros_like(a)
    for i in range(4):
        out |= source[(selector >> (4 * i)) & 7] << (8 * i)  # sign-replicate mode (bit 3) unused
    return out


OPS = {  # name -> (PTX mnemonic, numpy semantics on uint32 words)
    "mov": ("mov.b32", lambda a: a),
    "and": ("and.b32", lambda a, b: a & b),
    "shl": ("shl.b32", lambda a, n: a << n),
    "shr": ("shr.u32", lambda a, n: a >> n),
    "lop3": ("lop3.b32", _lop3),
    "prmt": ("prmt.b32", _prmt),
    "fma.f16x2": ("fma.rn.f16x2", _fma_pairs(jnp.float16)),
    "fma.bf16x2": ("fma.rn.bf16x2", _fma_pairs(jnp.bfloat16)),
}


def render(program: list[Instr], outputs: list[str], inputs: list[str]) -> str:
    """PTX text for `program` where output register i is $i and input j is $(len(outputs) + j);
    every other register name is declared as a local .b32."""
    slots = {name: f"${i}" for i, name in enumerate([*outputs, *inputs])}
    temps = sorted({i.dst for i in program} - slots.keys())
    reg = lambda x: f"0x{x:08X}" if isinstance(x, int) else slots.get(x, f"nib_{x}")
    lines = [f".reg .b32 {', '.join('nib_' + t for t in temps)};"] if temps else []
    for i in program:
        lines.append(f"{OPS[i.op][0]} {reg(i.dst)}, {', '.join(reg(s) for s in i.srcs)};")
    return "{\n" + "\n".join(lines) + "\n}"


def emulate(program: list[Instr], **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run `program` on uint32 words (numpy); returns every register."""
    regs = {k: np.asarray(v, np.uint32) for k, v in inputs.items()}
    for i in program:
        args = [np.uint32(s) if isinstance(s, int) else regs[s] for s in i.srcs]
        regs[i.dst] = np.asarray(OPS[i.op][1](*args), np.uint32)
    return regs


def _spread(src: str, dtype) -> list[Instr]:
    """Four bytes c of `src` -> two words of 16-bit floats c (bytes 0, 1 and 2, 3), exact."""
    magic, _, one, neg = MAGIC[jnp.dtype(dtype)]
    fma = "fma.f16x2" if jnp.dtype(dtype) == jnp.float16 else "fma.bf16x2"
    return [
        Instr("prmt", "w0", (src, magic * 0x01010101, _LOW_PAIR)),  # magic.c0, magic.c1
        Instr("prmt", "w1", (src, magic * 0x01010101, _HIGH_PAIR)),
        Instr("mov", "one", (one * 0x10001,)),
        Instr("mov", "neg", (neg * 0x10001,)),
        Instr(fma, "out0", ("w0", "one", "neg")),  # (offset + c) * 1 - offset
        Instr(fma, "out1", ("w1", "one", "neg")),
    ]


def nibbles_program(dtype, high: bool) -> list[Instr]:
    """packed (4 bytes) -> its low (or high) nibbles as four 16-bit floats of `dtype` (words
    out0, out1)."""
    shift = [Instr("shr", "t", ("packed", 4))] if high else []
    source = "t" if high else "packed"
    return [*shift, Instr("and", "n", (source, 0x0F0F0F0F)), *_spread("n", dtype)]


def levels_program(high: bool) -> list[Instr]:
    """upper, lower (4 bytes each; byte j holds channels j (low nibble) and j + H/2 (high
    nibble)) -> the 8-bit levels 16 u + l of the low (or high) channels as four float16
    (words out0, out1)."""
    if high:  # u_hi << 4 | l_hi: upper's high nibble in place, lower's shifted down
        splice = [Instr("shr", "t", ("lower", 4)),
                  Instr("lop3", "c", ("upper", "t", 0xF0F0F0F0, _SELECT_A_WHERE_C))]  # fmt: skip
    else:  # u_lo << 4 | l_lo
        splice = [Instr("shl", "t", ("upper", 4)),
                  Instr("lop3", "c", ("t", "lower", 0xF0F0F0F0, _SELECT_A_WHERE_C))]  # fmt: skip
    return [*splice, *_spread("c", jnp.float16)]


def _run(program, inputs, dtype):
    """One result (Pallas lowers a single-result asm only): four 16-bit floats per instance."""
    asm = render(program, ["out0", "out1"], [name for name, _ in inputs])
    [out] = pltriton.elementwise_inline_asm(
        asm,
        args=[x for _, x in inputs],
        constraints=",".join(["=r"] * 2 + ["r"] * len(inputs)),
        pack=4,
        result_shape_dtypes=[jax.ShapeDtypeStruct(inputs[0][1].shape, dtype)],
    )
    return out


def nibble_operands(packed: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """packed [n, m] uint8 -> (low nibbles, high nibbles) in `dtype` (float16 or bfloat16),
    exact; inside a Triton kernel only."""
    return tuple(_run(nibbles_program(dtype, h), [("packed", packed)], dtype) for h in (0, 1))


def level_operands(upper: jax.Array, lower: jax.Array) -> tuple[jax.Array, jax.Array]:
    """upper, lower [n, H/2] uint8 -> the levels 16 u + l of channels [0, H/2) and [H/2, H) as
    float16, exact; inside a Triton kernel only."""
    inputs = [("upper", upper), ("lower", lower)]
    return tuple(_run(levels_program(h), inputs, jnp.float16) for h in (0, 1))
