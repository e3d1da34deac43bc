"""Named training configurations: the model architecture plus its training hyperparameters.

    tiny, tiny-draft     the CPU reference pair (README demo, tests): minutes on a 2-core CPU
    small, small-draft   ~100M target + ~13M draft for one H100: a useful held-out loss in minutes
    base                 ~400M, room to grow (not trained anywhere yet)

Sizing `small` for ~5-6 minutes on one H100: 6 * N FLOPs per token (N = parameters in matmuls,
~88M) at ~35% MFU of the ~800 TFLOP/s that bf16 matmuls reach gives ~530k tokens/s, ~160M
tokens in 5 minutes: about 6 passes over ShareGPT's ~28M training tokens (vocab 16384). More
passes than that would start to overfit, so `small` is not made bigger. Memory: XLA's attention
keeps the [B, N, T, T] probabilities of every layer for the backward pass, ~1.5 GiB per 1024-token
sequence over 12 layers, so `small` takes 16 sequences a step without remat (the trainer turns
remat on by itself if a step would not fit). `steps` is a cap: GPU runs pass a time budget.
A draft config uses its target's tokenizer: its `tokenizer` entry only matters when it is
trained on its own.

Every config is a frozen dataclass, so `dataclasses.replace` derives variants and `fingerprint`
keys caches (reference models, token streams) by content rather than by name.
"""

import dataclasses
import hashlib
import json

from specdec.config import ModelConfig
from train.chat import SPECIAL_TOKENS
from train.layerskip import LayerSkip
from train.tokenizer import TokenizerConfig

# Ids the chat format gives its special tokens (train.chat): written into config.json so that
# specdec.load and transformers stop at the end of the assistant's turn.
BOS_ID = SPECIAL_TOKENS.index("<|bos|>")
EOS_ID = SPECIAL_TOKENS.index("<|end|>")
PAD_ID = SPECIAL_TOKENS.index("<|pad|>")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One named training run: model, tokenizer, data caps and optimisation hyperparameters."""

    name: str
    model: ModelConfig
    tokenizer: TokenizerConfig  # how to train the tokenizer when none is given
    batch_size: int  # B: sequences per optimizer step, over all devices together
    seq_len: int  # L: tokens per sequence (each sequence holds L inputs and L targets)
    steps: int  # optimizer steps (a time budget may shorten the schedule; see Trainer)
    lr: float  # peak learning rate
    warmup_steps: int  # linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio`
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1  # decoupled (AdamW), on matrices only (not on norm weights)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0  # global gradient-norm clip
    compute_dtype: str = "auto"  # "auto": bfloat16 on GPU/TPU, float32 on CPU (bf16 is slow there)
    remat: bool = False  # recompute each layer in the backward pass (less memory, ~1/3 more FLOPs)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    eval_tokens: int = 1_000_000  # cap on held-out target tokens per evaluation
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    log_every: int = 10  # steps between progress-bar updates (each one syncs with the device)
    seed: int = 0  # parameter init and data order
    train_records: int | None = None  # cap on train-split conversations (None: all)
    heldout_records: int | None = None  # cap on held-out conversations (None: all)
    distill_weight: float = 0.0  # loss = (1 - w) * CE + w * KL(teacher || student), with a teacher
    distill_temperature: float = 1.0  # both distributions softened by T; KL scaled by T^2
    layerskip: LayerSkip | None = None  # early-exit training (train.layerskip); None: plain CE
    loss_chunk: int = 0  # tokens per cross-entropy chunk (0: the whole [B, L, V] logits at once)

    def __post_init__(self):
        if self.batch_size < 1 or self.seq_len < 1 or self.steps < 1:
            raise ValueError(f"{self.batch_size=}, {self.seq_len=}, {self.steps=} must be >= 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"{self.warmup_steps=} must be in [0, {self.steps=})")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"{self.distill_weight=} must be in [0, 1]")
        if self.distill_temperature <= 0:
            raise ValueError(f"{self.distill_temperature=} must be positive")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"{self.compute_dtype=} must be 'auto', 'float32' or 'bfloat16'")
        if self.layerskip is not None:
            self.layerskip.check(self.model.num_layers)
            if self.distill_weight > 0:
                raise ValueError(f"layerskip cannot be combined with {self.distill_weight=} > 0")
        if self.loss_chunk < 0 or (self.loss_chunk and self.tokens_per_step % self.loss_chunk):
            raise ValueError(
                f"{self.loss_chunk=} must be 0 or a positive divisor of batch_size * seq_len = "
                f"{self.tokens_per_step}"
            )
        if self.loss_chunk and (self.layerskip is not None or self.distill_weight > 0):
            raise ValueError(f"{self.loss_chunk=} applies to the plain CE loss only")
        if self.model.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"model vocab_size={self.model.vocab_size} differs from the tokenizer's "
                f"vocab_size={self.tokenizer.vocab_size}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed; `model=dict(...)` changes model fields."""
        if isinstance(changes.get("model"), dict):
            changes["model"] = dataclasses.replace(self.model, **changes["model"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field as plain data; `layerskip` and `loss_chunk` only when set, so configs
        without them keep the fingerprints (checkpoints, cached reference pairs) they had before
        they existed."""
        fields = dataclasses.asdict(self)
        if self.layerskip is None:
            del fields["layerskip"]
        if not self.loss_chunk:  # likewise: fields added later are left out at their default
            del fields["loss_chunk"]
        return fields

    def fingerprint(self) -> str:
        """A short hash of every field: two configs with the same fingerprint train the same."""
        return _digest(self.to_dict())


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _llama(vocab: int, d: int, layers: int, heads: int, kv_heads: int, ffn: int, **kw):
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=ffn,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=d // heads,
        max_position_embeddings=kw.pop("max_position_embeddings", 4096),
        bos_token_id=BOS_ID,
        eos_token_ids=(EOS_ID,),
        **kw,
    )


# The tiny pair learns merges from 2,000 conversations and trains on the first 800 (~1.6M tokens
# at vocab 4096, of which a CPU run reads ~0.5M), so first use costs seconds of tokenizing.
_TINY_TOKENIZER = TokenizerConfig(
    vocab_size=4096, max_records=2000, max_chars=5_000_000, model_max_length=1024
)
# Merges learned from ~5,000 conversations (a few seconds): BPE merges saturate long before the
# whole corpus, and this keeps the GPU run's fixed costs small.
_SMALL_TOKENIZER = TokenizerConfig(
    vocab_size=16384, max_records=5000, max_chars=15_000_000, model_max_length=4096
)

CONFIGS: dict[str, TrainConfig] = {
    # ~1.3M parameters (the tied embedding is also the output matmul). A 2-core CPU runs ~2-3.5k
    # tokens/s on it in float32: 250 steps of 2k tokens take ~2.5-4 minutes.
    "tiny": TrainConfig(
        name="tiny",
        model=_llama(
            4096, 128, 4, 4, 2, 384, max_position_embeddings=1024, tie_word_embeddings=True
        ),
        tokenizer=_TINY_TOKENIZER,
        batch_size=8,
        seq_len=256,
        steps=250,
        lr=4e-3,
        warmup_steps=20,
        weight_decay=0.05,
        eval_every=0,
        eval_tokens=32_768,
        save_every=50,
        log_every=5,
        train_records=800,
        heldout_records=40,
    ),
    # ~0.36M parameters; a distillation step (its forward + backward, the target's forward) costs
    # about half a `tiny` step.
    "tiny-draft": TrainConfig(
        name="tiny-draft",
        model=_llama(
            4096, 64, 2, 2, 1, 192, max_position_embeddings=1024, tie_word_embeddings=True
        ),
        tokenizer=_TINY_TOKENIZER,
        batch_size=8,
        seq_len=256,
        steps=200,
        lr=6e-3,
        warmup_steps=20,
        weight_decay=0.0,
        eval_every=0,
        eval_tokens=32_768,
        save_every=50,
        log_every=5,
        train_records=800,
        heldout_records=40,
        distill_weight=0.5,
    ),
    # ~101M parameters (~88M in matmuls): Llama with GQA (12 query heads share 4 KV heads).
    "small": TrainConfig(
        name="small",
        model=_llama(16384, 768, 12, 12, 4, 2048),
        tokenizer=_SMALL_TOKENIZER,
        batch_size=16,
        seq_len=1024,
        steps=8000,
        lr=1e-3,
        warmup_steps=200,
        eval_every=1000,
        eval_tokens=1_000_000,
        save_every=1000,
        log_every=25,
    ),
    # ~13M parameters (tied embeddings), same tokenizer; distilled from `small`.
    "small-draft": TrainConfig(
        name="small-draft",
        model=_llama(16384, 384, 4, 6, 2, 1024, tie_word_embeddings=True),
        tokenizer=_SMALL_TOKENIZER,
        batch_size=32,
        seq_len=1024,
        steps=6000,
        lr=2e-3,
        warmup_steps=150,
        weight_decay=0.05,
        eval_every=1000,
        eval_tokens=1_000_000,
        save_every=1000,
        log_every=25,
        distill_weight=0.5,
    ),
    # ~400M parameters: room to grow (one H100 for about an hour; more data would help).
    "base": TrainConfig(
        name="base",
        model=_llama(16384, 1280, 20, 20, 4, 3456),
        tokenizer=_SMALL_TOKENIZER,
        batch_size=128,
        seq_len=1024,
        steps=10000,
        lr=8e-4,
        warmup_steps=500,
        remat=True,
        eval_every=1000,
        eval_tokens=1_000_000,
        save_every=1000,
        log_every=25,
    ),
}


def get_config(name: str, **overrides) -> TrainConfig:
    """The named config, with optional field overrides (`model=dict(...)` for model fields)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]


def matmul_params(model: ModelConfig) -> int:
    """Parameters that take part in matmuls: all but an untied input embedding (a lookup)."""
    n = model.num_params()
    return n if model.tie_word_embeddings else n - model.vocab_size * model.hidden_size


def attention_flops_per_token(model: ModelConfig, seq_len: int) -> int:
    """Attention's own FLOPs per trained token as PaLM's MFU counts them (its appendix B):
    12 * layers * heads * head_dim * seq_len (scores and weighted values, forward and backward,
    every key counted: a causal kernel does about half)."""
    return 12 * model.num_layers * model.num_heads * model.head_dim * seq_len
