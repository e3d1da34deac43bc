"""Model configuration: one frozen dataclass, presets, and the one mapping to/from HF config.json.

HF field names appear only in `ModelConfig.from_hf` and `ModelConfig.to_hf`.
"""

import dataclasses
import numbers
from typing import Any

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
ROPE_KINDS = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding: base frequency and the frequency-scaling rule."""

    theta: float = 10000.0
    kind: str = "default"  # one of ROPE_KINDS
    factor: float = 1.0  # linear / llama3: how much the context was stretched
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    def __post_init__(self):
        if self.kind not in ROPE_KINDS:
            raise ValueError(f"unsupported rope type {self.kind!r}; supported: {ROPE_KINDS}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3)."""

    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    rope: RopeConfig = RopeConfig()
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: biases on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm on each query/key head
    sliding_window: int | None = None  # Mistral/Qwen2 option; only allowed when it never binds
    architecture: str = "LlamaForCausalLM"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    initializer_range: float = 0.02  # std of random init (training and random demo models)

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {SUPPORTED_ARCHITECTURES}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            if not _is_positive_int(value := getattr(self, name)):
                raise ValueError(f"config {name}={value!r} must be a positive integer")
        if self.sliding_window is not None and not _is_positive_int(self.sliding_window):
            raise ValueError(f"config sliding_window={self.sliding_window!r} must be None or > 0")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def group_size(self) -> int:
        """G: query heads sharing one KV head."""
        return self.num_heads // self.num_kv_heads

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.attention_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        if self.qk_norm:
            attn += 2 * h
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * layer + d + head

    # ---- HF config.json <-> ModelConfig -------------------------------------------------------

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Map an HF `config.json` dict (transformers v4 or v5 layout) to a ModelConfig.

        Malformed values (a string where a size belongs, zero heads, ...) raise ValueError naming
        the field, never a TypeError or ZeroDivisionError from the arithmetic below.
        """
        if not isinstance(hf, dict):
            raise ValueError(f"config.json must hold a JSON object, got {type(hf).__name__}")
        archs = hf.get("architectures") or []
        if len(archs) != 1:
            raise ValueError(f"config.json must name exactly one architecture, got {archs!r}")
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {arch!r} in config.json; "
                f"supported: {SUPPORTED_ARCHITECTURES}"
            )
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"config.json is missing required fields {missing}")
        optional = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
        for key in (*required, *optional):
            if hf.get(key) is not None and not _is_positive_int(hf[key]):
                raise ValueError(f"config.json field {key}={hf[key]!r} must be a positive integer")
        eos = hf.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else [] if eos is None else [eos]
        if not all(_is_int(e, minimum=0) for e in eos_list):
            raise ValueError(f"config.json field eos_token_id={eos!r} must be token ids")
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        eos_ids = tuple(eos_list)
        window = hf.get("sliding_window")
        if arch == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
            window = None
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope=_rope_from_hf(hf),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=arch == "Qwen2ForCausalLM" or bool(hf.get("attention_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            sliding_window=window,
            architecture=arch,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            initializer_range=hf.get("initializer_range", 0.02),
        )

    def to_hf(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The HF `config.json` dict (transformers v5 layout) for this config."""
        if self.attention_bias and self.architecture != "Qwen2ForCausalLM":
            raise ValueError("attention_bias is only exported for Qwen2ForCausalLM")
        model_type = {
            "LlamaForCausalLM": "llama",
            "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2",
            "Qwen3ForCausalLM": "qwen3",
        }[self.architecture]
        rope: dict[str, Any] = {"rope_type": self.rope.kind, "rope_theta": self.rope.theta}
        if self.rope.kind in ("linear", "llama3"):
            rope["factor"] = self.rope.factor
        if self.rope.kind == "llama3":
            rope.update(
                low_freq_factor=self.rope.low_freq_factor,
                high_freq_factor=self.rope.high_freq_factor,
                original_max_position_embeddings=self.rope.original_max_position_embeddings,
            )
        eos: int | list[int] | None = None
        if len(self.eos_token_ids) == 1:
            eos = self.eos_token_ids[0]
        elif self.eos_token_ids:
            eos = list(self.eos_token_ids)
        return {
            "architectures": [self.architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "rope_parameters": rope,
            "rope_theta": self.rope.theta,
            "sliding_window": self.sliding_window,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "initializer_range": self.initializer_range,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }


def _is_int(value, minimum: int) -> bool:
    # bool is an int to Python, but `"hidden_size": true` is a broken config, not a size of 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _is_positive_int(value) -> bool:
    return _is_int(value, minimum=1)


def _rope_from_hf(hf: dict[str, Any]) -> RopeConfig:
    # transformers v5 keeps everything in `rope_parameters`; v4 used `rope_theta` + `rope_scaling`.
    for key in ("rope_parameters", "rope_scaling"):
        if not isinstance(hf.get(key) or {}, dict):
            raise ValueError(f"config.json field {key}={hf[key]!r} must be an object or null")
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    merged = {**legacy, **params}
    if kind not in ROPE_KINDS:
        raise ValueError(f"unsupported rope type {kind!r} in config.json; supported: {ROPE_KINDS}")
    return RopeConfig(
        theta=float(theta),
        kind=kind,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(merged.get("original_max_position_embeddings", 8192)),
    )


# ---- presets --------------------------------------------------------------------------------


def tiny_config(vocab_size: int = 256, **overrides: Any) -> ModelConfig:
    """A 2-layer model small enough for CPU tests and the random-weight demo."""
    base = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        initializer_range=0.1,
    )
    return ModelConfig(**{**base, **overrides})


def llama3_8b_config(**overrides: Any) -> ModelConfig:
    """The Llama-3-8B shape (for benchmarks with random weights)."""
    base = dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope=RopeConfig(
            theta=500000.0,
            kind="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    )
    return ModelConfig(**{**base, **overrides})
