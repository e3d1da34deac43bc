"""Train an EAGLE draft head for a loaded target and export it for `drafters.Eagle.load`.

    python -m train.eagle --target DIR --version 1|3 --out HEAD_DIR [--steps N]
        [--time-budget-s S] [--regenerate] [--resume] [--num-layers 1] [--draft-vocab N]
        [--ttt-steps 7] [--target-layers 1,5,8] [--mesh DATAxMODEL] ...

then `specdec.generate(target, prompts, drafter=Eagle.load(HEAD_DIR, target), policy=...)`.

Online features: the frozen target runs forward inside the jitted step (no cache, causal) and
hands the head its features and its distribution; nothing is written to disk. Losses
(train.eagle_steps): EAGLE-1/2 (`--version 1`) smooth-L1 feature regression + 0.1 x soft CE
against the target's distribution through the target's LM head, with uniform noise on the input
features; EAGLE-3 training-time test over `--ttt-steps` steps weighted 0.8^k, soft CE on the draft
vocabulary (the ids most often predicted in the training split's assistant turns: `--draft-vocab`
of them, else the fewest that cover `--draft-vocab-coverage` of those tokens, at most 32000),
positions whose target argmax is outside it masked. Both score assistant tokens only
(train.eagle_data.assistant_mask).

Machinery shared with the target trainer (train.trainer / train.steps / train.tokens): batches a
pure function of the step, AdamW with the learning rate as a step input, warmup + cosine, a time
budget that fixes the schedule after `PROBE_STEPS` timed steps, orbax checkpoints with a JSON
record, a tqdm bar, data parallelism over all local devices (rows sharded on a 1-D "data" mesh,
head and target replicated). A run killed and resumed from its last save reaches bit-identical
parameters (the feature noise key is derived from the seed and the step).

--regenerate replaces the corpus's assistant turns by the target's greedy responses
(train.eagle_data.regenerate_documents), cached as token streams in <out>.regen/.
Held-out metrics: the loss and the top-1 agreement of draft and target per unrolled step (an
acceptance proxy: acc_0 is the chance the first draft token is accepted at T = 0).
"""

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from drafters.eagle import Eagle, EagleHead, default_target_layers
from specdec import sharding
from specdec.models import Model, Net
from train.configs import _digest
from train.data import read_conversations
from train.eagle_data import (
    assistant_mask,
    chat_ids,
    draft_vocabulary,
    draft_vocabulary_size,
    predicted_counts,
    regenerate_documents,
)
from train.eagle_steps import LossSpec, eagle_terms, run_target
from train.files import make_readable
from train.packing import tokenize_conversations
from train.steps import ModelDef, TrainState, init_state, learning_rate, optimizer
from train.tokenizer import load_tokenizer
from train.tokens import Batches, eval_batches, token_stream
from train.trainer import BUDGET_MARGIN, PROBE_STEPS, _CheckpointStore

DEFAULT_DRAFT_VOCAB = 32_000  # the reference's draft vocabulary (of Llama 3's 128k)


@dataclasses.dataclass(frozen=True)
class EagleConfig:
    """One head-training run. Optimiser fields mirror train.configs.TrainConfig (train.steps
    reads them by name)."""

    version: int = 3  # 1: EAGLE-1/2; 3: EAGLE-3
    num_layers: int = 1  # decoder layers in the head (the public EAGLE-3 layout has one)
    draft_vocab: int | None = None  # EAGLE-3 draft vocabulary (None: by draft_vocab_coverage)
    draft_vocab_coverage: float = 0.98  # None above: the fewest ids covering this share of the
    #                                     training data's assistant tokens, at most 32000
    ttt_steps: int = 7  # EAGLE-3 training-time test steps K
    target_layers: tuple[int, ...] | None = None  # EAGLE-3 taps (None: default_target_layers)
    batch_size: int = 8  # B: rows per step, over all devices
    seq_len: int = 256  # L: head positions per row (a row holds L + 1 tokens)
    steps: int = 1000  # a cap: a time budget may shorten the schedule
    lr: float = 5e-4  # higher than the reference's 3e-5 / 5e-5: our runs are minutes, not epochs
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # the reference uses none
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 0.5  # global-norm clip, as SpecForge (EAGLE-1 clipped by value at 0.5)
    noise: float = 0.2  # EAGLE-1 feature noise (width noise * 512 / L)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    eval_tokens: int = 32_768  # cap on held-out positions per evaluation
    save_every: int = 100  # steps between checkpoints (0: only at the end)
    log_every: int = 10
    seed: int = 0  # head init, data order, feature noise
    train_records: int | None = None  # cap on train-split conversations (None: all)
    heldout_records: int | None = 200  # cap on held-out conversations

    def __post_init__(self):
        if self.version not in (1, 3):
            raise ValueError(f"EAGLE version must be 1 or 3, got {self.version!r}")
        if self.batch_size < 1 or self.seq_len < 1 or self.steps < 1 or self.ttt_steps < 1:
            raise ValueError(
                f"{self.batch_size=}, {self.seq_len=}, {self.steps=}, {self.ttt_steps=} must be "
                f">= 1"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"{self.warmup_steps=} must be in [0, {self.steps=})")
        if self.version == 3 and self.num_layers != 1:
            raise ValueError(
                f"an EAGLE-3 head exports in the public layout, which has one layer, not "
                f"{self.num_layers=}"
            )

    def spec(self, taps: tuple[int, ...]) -> LossSpec:
        return LossSpec(
            version=self.version,
            ttt_steps=1 if self.version == 1 else self.ttt_steps,
            target_layers=taps,
            noise=self.noise,
        )


@dataclasses.dataclass(frozen=True)
class EagleData:
    """Token streams with their loss masks, and the draft vocabulary counted from the train one."""

    train: np.ndarray  # [N] token ids
    train_mask: np.ndarray  # [N] uint8 (train.eagle_data.assistant_mask)
    heldout: np.ndarray  # [M]
    heldout_mask: np.ndarray  # [M]
    draft_ids: np.ndarray  # [Vd] int32 ascending target ids (arange(V) for EAGLE-1)
    masked: bool  # whether the masks mark assistant tokens (False: the tokenizer has no chat)


def build_data(
    train: np.ndarray,
    heldout: np.ndarray,
    ids: dict[str, int] | None,
    cfg: EagleConfig,
    vocab_size: int,
    *,
    vocabulary_counts: np.ndarray | None = None,
) -> EagleData:
    """Masks and the draft vocabulary of a train / held-out stream pair. The EAGLE-3 draft
    vocabulary ranks the ids predicted in `train`, plus `vocabulary_counts` [V] if given (the
    original corpus's, when `train` is regenerated: see `load_data`)."""
    train_mask, heldout_mask = assistant_mask(train, ids), assistant_mask(heldout, ids)
    if cfg.version == 1:
        draft_ids = np.arange(vocab_size, dtype=np.int32)
    else:
        counts = predicted_counts(train, train_mask, vocab_size)  # [V]
        if vocabulary_counts is not None:
            counts = counts + np.asarray(vocabulary_counts)
        size = cfg.draft_vocab or draft_vocabulary_size(
            counts, cfg.draft_vocab_coverage, DEFAULT_DRAFT_VOCAB
        )
        draft_ids = draft_vocabulary(counts, size)
    return EagleData(train, train_mask, heldout, heldout_mask, draft_ids, ids is not None)


def load_data(
    cfg: EagleConfig,
    target: Model,
    target_dir: str | os.PathLike,
    *,
    source=None,
    cache_dir=None,
    regenerate_dir: str | os.PathLike | None = None,
    regen_max_new_tokens: int = 256,
    regen_batch_size: int = 64,
    regen_batch_tokens: int = 65_536,
    progress: bool = True,
) -> EagleData:
    """Tokenized splits (cached, train.tokens) of the target's tokenizer, optionally regenerated.
    A regenerated corpus's draft vocabulary also counts the original train split's assistant
    tokens: greedy responses use few ids (1,504 of 16,384 in the H200 run), and a vocabulary of
    those alone can never draft what the target samples at T > 0."""
    ids = chat_ids(target_dir)
    streams, vocabulary_counts = {}, None
    for split, records in (("train", cfg.train_records), ("heldout", cfg.heldout_records)):
        if regenerate_dir is None:
            streams[split] = token_stream(
                target_dir, split, max_records=records, source=source, cache_dir=cache_dir
            )
        else:
            streams[split] = regenerated_stream(
                target,
                target_dir,
                split,
                records,
                source,
                Path(regenerate_dir),
                max_new_tokens=regen_max_new_tokens,
                batch_size=regen_batch_size,
                batch_tokens=regen_batch_tokens,
                progress=progress,
            )
    vocab_size = target.config.vocab_size
    if regenerate_dir is not None and cfg.version != 1:
        original = token_stream(
            target_dir, "train", max_records=cfg.train_records, source=source, cache_dir=cache_dir
        )
        vocabulary_counts = predicted_counts(original, assistant_mask(original, ids), vocab_size)
    return build_data(
        streams["train"],
        streams["heldout"],
        ids,
        cfg,
        vocab_size,
        vocabulary_counts=vocabulary_counts,
    )


def regenerated_stream(
    target,
    target_dir,
    split,
    records,
    source,
    directory: Path,
    *,
    max_new_tokens,
    batch_size,
    batch_tokens,
    progress,
) -> np.ndarray:
    """The split's stream with the target's own responses, cached in `directory` by the target's
    weight files, the split, the record cap, the source and the generation length."""
    ids = chat_ids(target_dir)
    if ids is None:
        raise ValueError(f"--regenerate needs the chat format's tokens; {target_dir}'s lack them")
    weights = [  # the target's identity without reading gigabytes: path, size, mtime
        (str(f.absolute()), f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(Path(target_dir).glob("*.safetensors"))
    ]
    key = _digest(
        {
            "weights": weights,
            "split": split,
            "records": records,
            "source": str(source),
            "max_new_tokens": max_new_tokens,
        }
    )
    path = directory / f"{split}-{key}.npy"
    if not path.is_file():
        tokenizer = load_tokenizer(target_dir)
        conversations = read_conversations(source, split=split)
        documents = []
        for document in tokenize_conversations(tokenizer, conversations, encode_batch=256):
            documents.append(document)
            if records is not None and len(documents) == records:
                break
        documents = regenerate_documents(
            target,
            documents,
            ids,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".npy.tmp", delete=False) as f:
            np.save(f, np.concatenate(documents).astype(np.int32))
        make_readable(f.name)
        os.replace(f.name, path)
    return np.load(path, mmap_mode="r")


# ---- the trainer ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EagleResult:
    """What one `fit` call did and measured."""

    version: int
    steps: int
    total_steps: int
    final_loss: float  # training loss of the last logged window (mean)
    heldout_loss: float
    heldout_ce: tuple[float, ...]  # per unrolled step
    heldout_acc: tuple[float, ...]  # top-1 agreement with the target per unrolled step
    initial_heldout_loss: float  # before training (the untrained head), for scale
    tokens_per_second: float  # steady state, head positions (compile and evals excluded)
    draft_vocab: int
    masked: bool  # trained on assistant tokens only (False: all tokens)
    devices: int
    compile_seconds: float
    wall_seconds: float
    stopped_early: bool
    history: tuple[tuple[int, float], ...]

    def summary(self) -> str:
        acc = ", ".join(f"{a:.3f}" for a in self.heldout_acc)
        return (
            f"EAGLE-{self.version}: {self.steps}/{self.total_steps} steps; train loss "
            f"{self.final_loss:.4f}; held-out loss {self.heldout_loss:.4f} (untrained "
            f"{self.initial_heldout_loss:.4f}); held-out top-1 agreement by step [{acc}]; "
            f"{self.tokens_per_second:,.0f} positions/s; draft vocab {self.draft_vocab}; "
            f"{'assistant tokens' if self.masked else 'all tokens (no chat format)'}; "
            f"{self.devices} device(s); {self.compile_seconds:.0f}s to the first step (compiles, "
            f"initial evaluation) of wall "
            f"{self.wall_seconds:.0f}s"
        )


class EagleTrainer:
    """Trains one EAGLE head against a frozen target on one host's devices."""

    def __init__(
        self,
        cfg: EagleConfig,
        target: Model,
        data: EagleData,
        *,
        workdir: str | os.PathLike | None = None,
        resume: bool = False,
        progress: bool = True,
        devices=None,
        mesh: Mesh | None = None,
    ):
        """mesh: a (data, model) mesh (specdec.sharding): rows over "data", the head's and the
        target's weights tensor-parallel over "model" (default: a 1-D "data" mesh over
        `devices`, head and target replicated)."""
        self.cfg, self.target, self.data, self.progress = cfg, target, data, progress
        if mesh is not None:
            self.devices = list(sharding.check_mesh(mesh).devices.flat)
            sharding.check_config(target.config, mesh, "the target (and so the head)")
        else:
            self.devices = list(devices or jax.devices())
        rows = len(self.devices) if mesh is None else mesh.shape["data"]
        if cfg.batch_size % rows:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be a multiple of the {rows} data-parallel "
                f"devices"
            )
        self.mesh = mesh if mesh is not None else Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.by_row = NamedSharding(self.mesh, P("data"))
        tcfg = target.config
        self.taps = ()
        if cfg.version == 3:
            self.taps = tuple(cfg.target_layers or default_target_layers(tcfg.num_layers))
            if any(not 0 <= t < tcfg.num_layers for t in self.taps):
                raise ValueError(
                    f"target_layers={self.taps} must be layers of [0, {tcfg.num_layers})"
                )
        self.spec = cfg.spec(self.taps)
        self.batches = Batches(data.train, cfg.batch_size, cfg.seq_len, cfg.seed)
        self.mask_batches = Batches(data.train_mask, cfg.batch_size, cfg.seq_len, cfg.seed)

        make = lambda: EagleHead(
            tcfg,
            version=cfg.version,
            num_layers=cfg.num_layers,
            num_taps=len(self.taps),
            draft_vocab=len(data.draft_ids),
            rngs=nnx.Rngs(cfg.seed),
            param_dtype=jnp.float32,
        )
        if mesh is None:
            self.model, params = ModelDef.split(make())
            self.state = jax.device_put(init_state(params, cfg), self.replicated)
            self.target_net = jax.device_put(target.net, self.replicated)
            state_sharding = self.replicated
        else:  # the head's state created directly sharded; the target's weights placed by rule
            self.model, _ = ModelDef.split(nnx.eval_shape(make))
            fresh = lambda: init_state(ModelDef.split(make())[1], cfg)
            state_sharding = sharding.param_shardings(jax.eval_shape(fresh), mesh)
            self.state = sharding.create(fresh, state_sharding)
            self.target_net = sharding.place(target.net, mesh)
        self.draft_ids = jax.device_put(jnp.asarray(data.draft_ids, jnp.int32), self.replicated)
        self._train_step = jax.jit(
            self._make_train_step(),
            donate_argnums=(0,),
            out_shardings=(state_sharding, self.replicated),
        )
        self._eval_step = jax.jit(self._make_eval_step(), out_shardings=self.replicated)

        self.total_steps: int | None = None
        self.checkpoints = None
        if workdir is not None:
            self.checkpoints = _CheckpointStore(Path(workdir) / "checkpoints")
            latest = self.checkpoints.latest_step()
            if latest is not None and not resume:
                raise FileExistsError(
                    f"{workdir} already holds checkpoints (latest step {latest}); pass "
                    f"resume=True (--resume) to continue, or use a fresh directory"
                )
            if latest is not None:
                self._restore(latest)

    # ---- steps ------------------------------------------------------------------------------

    def _terms(self, params, target, out, draft_ids, tokens, mask, key):
        head, dtype = self.model.module(params), self.target.dtype
        return eagle_terms(head, target, out, draft_ids, tokens, mask, self.spec, dtype, key)

    def _make_train_step(self):
        tx, spec, seed = optimizer(self.cfg), self.spec, self.cfg.seed

        def loss_fn(params, target_net, out, draft_ids, tokens, mask, step):
            key = jax.random.fold_in(jax.random.key(seed), step)  # resume draws the same noise
            terms = self._terms(params, target_net.module(), out, draft_ids, tokens, mask, key)
            return terms.loss(spec), terms

        def train_step(state: TrainState, target_net, draft_ids, tokens, mask, lr):
            # The frozen target's forward, outside the differentiated function: online features.
            out = run_target(target_net.module(), tokens, spec.target_layers)
            grads, terms = jax.grad(loss_fn, has_aux=True)(
                state.params, target_net, out, draft_ids, tokens, mask, state.step
            )
            updates, opt = tx.update(grads, state.opt, state.params)
            params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
            return TrainState(step=state.step + 1, params=params, opt=opt), terms.metrics(spec)

        return train_step

    def _make_eval_step(self):
        def eval_step(params, target_net, draft_ids, tokens, mask, weights):
            target, mask = target_net.module(), mask * weights[:, None]
            out = run_target(target, tokens, self.spec.target_layers)
            return self._terms(params, target, out, draft_ids, tokens, mask, None)

        return eval_step

    def _put(self, array: np.ndarray, dtype) -> jax.Array:
        return jax.device_put(np.asarray(array, dtype), self.by_row)

    def evaluate(self) -> dict[str, np.ndarray]:
        """Held-out metrics (loss, ce [K], acc [K], feature), up to cfg.eval_tokens positions."""
        cfg, total = self.cfg, None
        args = (self.data.heldout, cfg.batch_size, cfg.seq_len, cfg.eval_tokens)
        margs = (self.data.heldout_mask, *args[1:])
        for (tokens, weights), (mask, _) in zip(
            eval_batches(*args), eval_batches(*margs), strict=True
        ):
            terms = self._eval_step(
                self.state.params,
                self.target_net,
                self.draft_ids,
                self._put(tokens, np.int32),
                self._put(mask, np.float32),
                self._put(weights, np.float32),
            )
            total = terms if total is None else total + terms
        return {k: np.asarray(v, np.float64) for k, v in total.metrics(self.spec).items()}

    # ---- checkpoints -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        return _digest(
            {
                "config": dataclasses.asdict(self.cfg),
                "target": dataclasses.asdict(self.target.config),
                "draft_ids": hashlib.sha256(np.asarray(self.data.draft_ids).tobytes()).hexdigest(),
            }
        )

    def _meta(self) -> dict:
        return {
            "fingerprint": self.fingerprint(),
            "step": int(self.state.step),
            "train_tokens": len(self.data.train),
            "total_steps": self.total_steps,
        }

    def _restore(self, step: int) -> None:
        state, meta = self.checkpoints.restore(step, self.state.to_dict())
        if meta["fingerprint"] != self.fingerprint():
            raise ValueError(
                f"checkpoint at step {step} ({meta['fingerprint']}) was written by another run "
                f"configuration, target or draft vocabulary than this one ({self.fingerprint()})"
            )
        if meta["train_tokens"] != len(self.data.train):
            raise ValueError(
                f"checkpoint was trained on {meta['train_tokens']} tokens, this data has "
                f"{len(self.data.train)}: resuming would change the data order"
            )
        self.state = TrainState.from_dict(state)
        self.total_steps = meta["total_steps"]

    def save(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(int(self.state.step), self.state.to_dict(), self._meta())

    # ---- the loop ----------------------------------------------------------------------------

    def fit(self, *, time_budget_s: float | None = None, stop_after: int | None = None):
        """Train to the schedule's end (or the budget's deadline), evaluate, save; returns an
        EagleResult. stop_after: leave after that many steps without evaluating or saving, as if
        killed there (the resume test)."""
        cfg, start = self.cfg, time.perf_counter()
        deadline = start + time_budget_s if time_budget_s else None
        if self.total_steps is None and not time_budget_s:
            self.total_steps = cfg.steps
        total = lambda: self.total_steps or cfg.steps
        first = step = int(self.state.step)
        initial = self.evaluate() if step == 0 and stop_after is None else None
        bar = tqdm(
            total=total(), initial=first, unit="step", disable=not self.progress, mininterval=1.0
        )
        pending, history = [], []
        steady_positions, steady_seconds, paused = 0, 0.0, 0.0
        compile_seconds, eval_seconds, last_loss = 0.0, 0.0, float("nan")
        window = probe = start
        stopped_early = False
        while step < total():
            if stop_after is not None and step >= stop_after:
                break
            if deadline and self.total_steps and time.perf_counter() > deadline - eval_seconds - 1:
                stopped_early = True
                break
            lr = np.float32(learning_rate(step, total(), cfg))
            self.state, metrics = self._train_step(
                self.state,
                self.target_net,
                self.draft_ids,
                self._put(self.batches(step), np.int32),
                self._put(self.mask_batches(step), np.float32),
                lr,
            )
            pending.append(metrics["loss"])
            step += 1
            bar.update(1)
            if step == first + 1:
                jax.block_until_ready(metrics)
                compile_seconds = time.perf_counter() - start
                window = probe = time.perf_counter()
                pending = []
            if self.total_steps is None and step == first + 1 + PROBE_STEPS:
                jax.block_until_ready(metrics)
                step_seconds = (time.perf_counter() - probe) / PROBE_STEPS
                eval_start = time.perf_counter()
                self.evaluate()
                eval_seconds = time.perf_counter() - eval_start
                paused += eval_seconds
                left = (deadline - time.perf_counter()) * (1 - BUDGET_MARGIN) - eval_seconds
                per_step = step_seconds + (eval_seconds / cfg.eval_every if cfg.eval_every else 0)
                self.total_steps = max(step, min(cfg.steps, step + int(left / per_step)))
                bar.total = self.total_steps
                bar.write(f"{step_seconds * 1e3:.0f} ms/step: {self.total_steps} steps fit")
            if pending and (step % cfg.log_every == 0 or step == total()):
                values = np.asarray(jax.device_get(pending))
                pending, now = [], time.perf_counter()
                steady_seconds += now - window - paused
                steady_positions += len(values) * cfg.batch_size * cfg.seq_len
                window, paused = now, 0.0
                last_loss = float(values.mean())
                history.append((step, last_loss))
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total():
                eval_start = time.perf_counter()
                m = self.evaluate()
                paused += time.perf_counter() - eval_start
                bar.write(f"step {step}: held-out loss {m['loss']:.4f}, acc {m['acc'].round(3)}")
            if cfg.save_every and step % cfg.save_every == 0 and step < total():
                save_start = time.perf_counter()
                self.save()
                paused += time.perf_counter() - save_start
        bar.close()
        if stop_after is not None and step < total():  # simulated kill: periodic saves only
            if self.checkpoints is not None:
                self.checkpoints.wait()
            return None
        if pending:
            last_loss = float(np.mean(jax.device_get(pending)))
            history.append((step, last_loss))
        self.save()
        if self.checkpoints is not None:
            self.checkpoints.wait()
        final = self.evaluate()
        return EagleResult(
            version=cfg.version,
            steps=int(self.state.step),
            total_steps=total(),
            final_loss=last_loss,
            heldout_loss=float(final["loss"]),
            heldout_ce=tuple(map(float, final["ce"])),
            heldout_acc=tuple(map(float, final["acc"])),
            initial_heldout_loss=float(initial["loss"]) if initial else float("nan"),
            tokens_per_second=steady_positions / steady_seconds if steady_seconds else 0.0,
            draft_vocab=len(self.data.draft_ids),
            masked=self.data.masked,
            devices=len(self.devices),
            compile_seconds=compile_seconds,
            wall_seconds=time.perf_counter() - start,
            stopped_early=stopped_early,
            history=tuple(history),
        )

    # ---- export ------------------------------------------------------------------------------

    def drafter(self) -> Eagle:
        """The trained head as a drafter for `self.target` (weights in the target's dtype)."""
        params = jax.device_get(self.state.params)
        module = self.model.module(
            jax.tree.map(lambda x: jnp.asarray(x, self.target.dtype), params)
        )
        ids = np.asarray(self.data.draft_ids)
        return Eagle(
            head=Net(*nnx.split(module)),
            target=self.target.net,
            draft_ids=jnp.asarray(ids, jnp.int32),
            version=self.cfg.version,
            target_layers=self.taps,
            full_vocab=len(ids) == self.target.config.vocab_size,
        )


# ---- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    d = EagleConfig()
    p = argparse.ArgumentParser(
        prog="python -m train.eagle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", required=True, help="the target's HF checkpoint directory")
    p.add_argument("--version", type=int, choices=(1, 3), required=True, help="EAGLE-1/2 or 3")
    p.add_argument("--out", required=True, help="the head directory to write (Eagle.load)")
    p.add_argument("--steps", type=int, help=f"optimizer steps (a cap with a budget; {d.steps})")
    p.add_argument("--time-budget-s", type=float, help="stop cleanly within this wall time")
    p.add_argument("--regenerate", action="store_true", help="train on the target's responses")
    p.add_argument("--regen-max-new-tokens", type=int, default=256, help="reply cap per turn (256)")
    p.add_argument("--regen-batch-size", type=int, default=64, help="prompts per generate (64)")
    p.add_argument(
        "--regen-batch-tokens",
        type=int,
        default=65_536,
        help="padded tokens (prompts + reply cap) per generate (65536)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help="head decoder layers")
    p.add_argument(
        "--draft-vocab",
        type=int,
        help="EAGLE-3 draft vocabulary size (default: by --draft-vocab-coverage)",
    )
    p.add_argument(
        "--draft-vocab-coverage",
        type=float,
        default=d.draft_vocab_coverage,
        help="without --draft-vocab: the fewest ids covering this share of the training "
        f"assistant tokens, at most {DEFAULT_DRAFT_VOCAB} ({d.draft_vocab_coverage})",
    )
    p.add_argument("--ttt-steps", type=int, default=d.ttt_steps, help="EAGLE-3 unrolled steps")
    p.add_argument("--target-layers", help="EAGLE-3 taps, comma-separated (1, L/2-1, L-4)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, help="default: min(50, steps / 10)")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--train-records", type=int, help="cap on train conversations (all)")
    p.add_argument("--heldout-records", type=int, default=d.heldout_records)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument("--data", help="a ShareGPT-format JSON file (default: the packaged corpus)")
    p.add_argument("--cache-dir", help="token-stream cache (default: artifacts/cache/tokens)")
    p.add_argument("--workdir", help="orbax checkpoints (default: <out>.ckpt)")
    p.add_argument("--no-checkpoints", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", help="also write the result here")
    p.add_argument(
        "--mesh",
        metavar="DATAxMODEL",
        help="data x tensor parallel mesh, e.g. 1x2 (default: data parallel over all devices)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> EagleConfig:
    steps = args.steps or EagleConfig.steps
    warmup = args.warmup_steps if args.warmup_steps is not None else min(50, steps // 10)
    taps = None
    if args.target_layers:
        try:
            taps = tuple(int(t) for t in args.target_layers.split(",") if t.strip())
        except ValueError:
            message = f"--target-layers {args.target_layers!r} is not a list of integers"
            raise ValueError(message) from None
    return EagleConfig(
        version=args.version,
        num_layers=args.num_layers,
        draft_vocab=args.draft_vocab,
        draft_vocab_coverage=args.draft_vocab_coverage,
        ttt_steps=args.ttt_steps,
        target_layers=taps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        steps=steps,
        lr=args.lr,
        warmup_steps=warmup,
        eval_every=args.eval_every,
        save_every=args.save_every,
        seed=args.seed,
        train_records=args.train_records,
        heldout_records=args.heldout_records,
    )


def main(argv: list[str] | None = None) -> EagleResult:
    p = parser()
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args)
        mesh = sharding.mesh_from_text(args.mesh)
    except ValueError as error:
        p.error(str(error))
    import specdec

    if args.dtype == "auto":
        gpu = jax.default_backend() in ("gpu", "tpu")
        dtype = jnp.bfloat16 if gpu else jnp.float32
    else:
        dtype = jnp.dtype(args.dtype)
    target = specdec.load(args.target, dtype=dtype, attention="xla", mesh=mesh)
    out = args.out.rstrip("/")
    data = load_data(
        cfg,
        target,
        args.target,
        source=args.data,
        cache_dir=args.cache_dir,
        regenerate_dir=f"{out}.regen" if args.regenerate else None,
        regen_max_new_tokens=args.regen_max_new_tokens,
        regen_batch_size=args.regen_batch_size,
        regen_batch_tokens=args.regen_batch_tokens,
        progress=not args.no_progress,
    )
    print(
        f"EAGLE-{cfg.version} head for {args.target}: {len(data.train) / 1e6:.2f}M train / "
        f"{len(data.heldout) / 1e6:.3f}M held-out tokens"
        + ("" if data.masked else " (no chat tokens: scoring all tokens)")
        + (" (regenerated by the target)" if args.regenerate else "")
    )
    workdir = None if args.no_checkpoints else (args.workdir or f"{out}.ckpt")
    try:
        trainer = EagleTrainer(
            cfg,
            target,
            data,
            workdir=workdir,
            resume=args.resume,
            progress=not args.no_progress,
            mesh=mesh,
        )
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None
    result = trainer.fit(time_budget_s=args.time_budget_s)
    trainer.drafter().save(out)
    info = {"result": dataclasses.asdict(result), "config": dataclasses.asdict(cfg)}
    info["target"], info["regenerated"] = str(args.target), args.regenerate
    (Path(out) / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    print(result.summary())
    print(f"exported to {out}")
    return result


if __name__ == "__main__":
    main()
