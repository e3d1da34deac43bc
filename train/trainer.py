"""The training loop: data-parallel jitted steps, time budgets, evaluation, checkpoints, progress.

    data = load_data(cfg, tokenizer_dir)                 # cached token streams (train.tokens)
    trainer = Trainer(cfg, data, workdir="runs/small")   # resume=True continues the last save
    result = trainer.fit(time_budget_s=360)              # TrainResult: losses, tokens/s, MFU, ...
    export(trainer.module(), "out/small", tokenizer_dir) # HF checkpoint dir (train.export)

Parallelism: one 1-D mesh over all local devices, axis "data". Each batch is sharded by rows
(`P("data")`), parameters and optimizer state are replicated, and XLA inserts the gradient
all-reduce. One device is the same program with a mesh of one. With `mesh=` (a 2-D ("data",
"model") mesh, `--mesh DATAxMODEL`) the parameters and optimizer moments are also split over
"model" by specdec.sharding's rule table (tensor parallelism) and created directly sharded.

Determinism and resume: initialisation is seeded and batch s is a pure function of s
(`train.tokens.Batches`), so a checkpoint needs only the state (params, optimizer, step) and the
schedule's length; a run that is killed and resumed from its last save reaches bit-identical
parameters (tests/train/test_trainer.py checks this).

Time budget: after `PROBE_STEPS` timed steps (and one held-out evaluation, to time that too) the
cosine schedule's length is fixed so the run ends inside the budget; that length is saved with
each checkpoint, and a hard deadline stops the loop cleanly if the estimate was optimistic.

Early-exit training (cfg.layerskip, train.layerskip): the step's layer-dropout key is derived
from the seed and the step, so resume stays exact; the held-out loss is then reported at every
exit layer and for the full model (`TrainResult.exit_heldout_loss` / `exit_heldout_ppl`), which
`eval_exits=True` also gives a model trained without the recipe, for comparison. `init_from`
starts from an HF checkpoint directory's weights instead of the random init (continued training).

MFU = model FLOPs per token * tokens/s / peak, with model FLOPs per token = 6 * N (N: parameters
that take part in matmuls; attention's own T^2 work is not counted), plus 2 * N_teacher when a
teacher runs forward for distillation (the early exits' extra LM-head matmuls are not counted).
The peak is `peak_flops` if given, else looked up by device kind (dense bf16 tensor-core peak per
device, times the device count); CPU has none.
"""

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from specdec import sharding
from specdec.model import Transformer
from train.configs import TrainConfig, matmul_params
from train.data import Source
from train.steps import (
    ModelDef,
    Teacher,
    TrainState,
    init_state,
    learning_rate,
    make_eval_step,
    make_train_step,
)
from train.tokens import Batches, eval_batches, token_stream, unigram_entropy

PROBE_STEPS = 20  # timed steps before a time budget fixes the schedule's length
MEMORY_FRACTION = 0.9  # a step needing more of the device's memory than this gets remat
PRINT_EVERY_S = 30.0  # with the progress bar off, a plain log line at most this often
BUDGET_MARGIN = 0.03  # fraction of a time budget left unplanned (timing noise, the final save)

# Dense bf16 tensor-core peak FLOP/s per device, by a lower-case substring of `device_kind`.
PEAK_FLOPS = (
    ("h100", 989e12),
    ("h200", 989e12),
    ("h800", 989e12),
    ("gh200", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v6", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 197e12),  # v5e ("TPU v5 lite")
    ("tpu v4", 275e12),
)


def device_peak_flops(devices=None) -> tuple[float | None, str]:
    """(total peak FLOP/s of `devices`, how it was found); None where unknown (CPUs)."""
    devices = devices or jax.devices()
    kind = devices[0].device_kind
    for key, peak in PEAK_FLOPS:
        if key in kind.lower():
            return peak * len(devices), f"{len(devices)} x {peak / 1e12:.0f} TFLOP/s ({kind}, bf16)"
    return None, f"unknown peak for {kind!r} (pass peak_flops)"


def compute_dtype(cfg: TrainConfig):
    if cfg.compute_dtype != "auto":
        return jnp.dtype(cfg.compute_dtype)
    return jnp.dtype(jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32)


@dataclasses.dataclass(frozen=True)
class TrainData:
    """Token streams for one run: training and held-out (see train.tokens)."""

    train: np.ndarray  # [N] token ids
    heldout: np.ndarray  # [M] token ids


def load_data(
    cfg: TrainConfig,
    tokenizer_dir: str | os.PathLike,
    *,
    source: Source = None,
    cache_dir: str | os.PathLike | None = None,
) -> TrainData:
    """The config's train and held-out token streams (tokenized once, then cached on disk)."""
    kw = dict(source=source, cache_dir=cache_dir)
    return TrainData(
        train=token_stream(tokenizer_dir, "train", max_records=cfg.train_records, **kw),
        heldout=token_stream(tokenizer_dir, "heldout", max_records=cfg.heldout_records, **kw),
    )


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What one `fit` call did and measured."""

    config: str
    steps: int  # optimizer steps taken in total (across resumes)
    total_steps: int  # the schedule's length
    tokens: int  # training tokens seen in total
    epochs: float  # passes over the training stream
    final_loss: float  # training loss of the last logged window (mean)
    heldout_loss: float  # nats per token on the held-out split
    heldout_ppl: float
    unigram_entropy: float  # nats: the loss of the best context-free model, for scale
    tokens_per_second: float  # steady state (compile, evals and saves excluded)
    mfu: float | None  # model FLOPs utilisation (see module docstring); None without a peak
    peak_flops: float | None
    peak_source: str
    flops_per_token: float
    params: int  # all parameters
    matmul_params: int  # parameters that take part in matmuls (the N of 6N)
    devices: int
    compute_dtype: str
    compile_seconds: float  # first step, compile included
    wall_seconds: float  # this fit call
    stopped_early: bool  # the time budget's hard deadline stopped the run before total_steps
    history: tuple[tuple[int, float], ...]  # (step, mean training loss of the window before it)
    # Held-out loss / perplexity at exit E = 1..L (layers [0, E) + final norm + LM head; the last
    # is the full model): filled when the trainer evaluates every exit (see Trainer), else empty.
    exit_heldout_loss: tuple[float, ...] = ()
    exit_heldout_ppl: tuple[float, ...] = ()

    def summary(self) -> str:
        mfu = f"{self.mfu:.1%}" if self.mfu is not None else "n/a"
        exits = f"; held-out ppl by exit {format_exits(self.exit_heldout_ppl)}"
        return (
            f"{self.config}: {self.steps}/{self.total_steps} steps, "
            f"{self.tokens / 1e6:.1f}M tokens ({self.epochs:.2f} epochs); train loss "
            f"{self.final_loss:.3f}; held-out loss {self.heldout_loss:.3f} (ppl "
            f"{self.heldout_ppl:.1f}; unigram {self.unigram_entropy:.3f}); "
            f"{self.tokens_per_second:,.0f} tokens/s; MFU {mfu} of {self.peak_source}; "
            f"params {self.params / 1e6:.2f}M ({self.matmul_params / 1e6:.2f}M in matmuls); "
            f"{self.devices} device(s), {self.compute_dtype}; wall {self.wall_seconds:.0f}s"
            + (exits if self.exit_heldout_ppl else "")
        )


def format_exits(ppl: tuple[float, ...]) -> str:
    """'1: 812.3, 2: 401.0, ..., 4 (full): 95.2' for perplexities at exits 1..L."""
    last = len(ppl)
    return ", ".join(f"{e}{' (full)' if e == last else ''}: {p:.1f}" for e, p in enumerate(ppl, 1))


class Trainer:
    """Trains one TrainConfig on one host's devices; optional teacher, checkpoints and resume."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        *,
        workdir: str | os.PathLike | None = None,
        resume: bool = False,
        teacher=None,
        peak_flops: float | None = None,
        progress: bool = True,
        devices=None,
        init_from: str | os.PathLike | None = None,
        eval_exits: bool | None = None,
        mesh: Mesh | None = None,
    ):
        """workdir: where orbax checkpoints go (None: no checkpoints). resume: continue from the
        last checkpoint in workdir, if any. teacher: a `specdec.Model` to distill from (used when
        cfg.distill_weight > 0). peak_flops: total peak FLOP/s for MFU (default: by device kind).
        init_from: an HF checkpoint directory whose weights start the run (continued training;
        its config must equal cfg.model) instead of the seeded random init. eval_exits: evaluate
        the held-out loss at every exit layer too (default: when cfg.layerskip is set; a model
        trained without the recipe turns it on to show what early exits cost without it).
        mesh: a (data, model) mesh (specdec.sharding): rows over "data", parameters and optimizer
        state tensor-parallel over "model" by specdec.sharding's rules (default: a 1-D "data"
        mesh over `devices`, everything replicated)."""
        self.cfg, self.data, self.progress = cfg, data, progress
        if mesh is not None:
            self.devices = list(sharding.check_mesh(mesh).devices.flat)
            sharding.check_config(cfg.model, mesh, f"config {cfg.name!r}")
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
        self.dtype = compute_dtype(cfg)
        self.batches = Batches(data.train, cfg.batch_size, cfg.seq_len, cfg.seed)
        self.unigram = unigram_entropy(data.train, cfg.model.vocab_size)

        self.init_from = None if init_from is None else str(init_from)
        make = lambda: Transformer(
            cfg.model,
            rngs=nnx.Rngs(cfg.seed),
            param_dtype=jnp.float32,
            dtype=self.dtype,
            attention="xla",
            remat=cfg.remat,
        )
        if init_from is None:
            # On a mesh only the abstract module is built here; the state is created sharded.
            module = make() if mesh is None else nnx.eval_shape(make)
        else:
            module = _load_initial(init_from, cfg, mesh)
            module.dtype, module.remat = self.dtype, cfg.remat
        self.model, params = ModelDef.split(module)
        if mesh is None:
            self.state_sharding = self.replicated
            self.state = jax.device_put(init_state(params, cfg), self.replicated)
        else:
            fresh = lambda: init_state(ModelDef.split(make())[1], cfg)
            if init_from is None:
                self.state_sharding = sharding.param_shardings(jax.eval_shape(fresh), mesh)
                self.state = sharding.create(fresh, self.state_sharding)
            else:
                state = init_state(params, cfg)  # the params are already sharded
                self.state_sharding = sharding.param_shardings(state, mesh)
                self.state = jax.device_put(state, self.state_sharding)

        self.teacher, self.teacher_params = None, {}
        flops_params = 6 * matmul_params(cfg.model)
        if teacher is not None and cfg.distill_weight > 0:
            if teacher.config.vocab_size != cfg.model.vocab_size:
                raise ValueError(
                    f"teacher vocab_size={teacher.config.vocab_size} differs from the student's "
                    f"{cfg.model.vocab_size}; a draft must share its target's tokenizer"
                )
            teacher_def, teacher_params = ModelDef.split(teacher.module())
            self.teacher = Teacher(teacher_def)
            self.teacher_params = jax.device_put(teacher_params, self.replicated)
            flops_params += 2 * matmul_params(teacher.config)
        self.flops_per_token = float(flops_params)
        if peak_flops is not None:
            self.peak_flops, self.peak_source = (
                peak_flops,
                f"{peak_flops / 1e12:.0f} TFLOP/s (given)",
            )
        else:
            self.peak_flops, self.peak_source = device_peak_flops(self.devices)

        self._train_step = None  # compiled at the start of `fit` (see `_compile`)
        self.eval_exits = cfg.layerskip is not None if eval_exits is None else eval_exits
        exits = tuple(range(1, cfg.model.num_layers + 1)) if self.eval_exits else None
        self._eval_step = jax.jit(
            make_eval_step(self.model, exits),
            in_shardings=(self._params_sharding(), self.by_row, self.by_row),
            out_shardings=self.replicated,
        )

        self.total_steps: int | None = None  # fixed by the config, a time budget, or a checkpoint
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

    # ---- compilation ------------------------------------------------------------------------

    def _params_sharding(self):
        replicated = isinstance(self.state_sharding, NamedSharding)
        return self.state_sharding if replicated else self.state_sharding.params

    def _jit_train_step(self):
        return jax.jit(
            make_train_step(self.model, self.cfg, self.teacher),
            donate_argnums=(0,),
            # (state, tokens, lr, teacher_params, total_steps)
            in_shardings=(self.state_sharding, self.by_row) + (self.replicated,) * 3,
            out_shardings=(self.state_sharding, self.replicated),
        )

    def _compile(self) -> None:
        """Compile the train step ahead of time; where the device reports its memory and the step
        would not fit, switch on per-layer remat (same parameters, ~1/3 more FLOPs) instead."""
        if self._train_step is not None:
            return
        batch = jax.ShapeDtypeStruct(
            (self.cfg.batch_size, self.cfg.seq_len + 1), jnp.int32, sharding=self.by_row
        )
        args = (self.state, batch, np.float32(0.0), self.teacher_params, np.int32(0))
        compiled = self._jit_train_step().lower(*args).compile()
        need, limit = _memory_need(compiled), _memory_limit(self.devices[0])
        if need and limit and need > MEMORY_FRACTION * limit and not self.cfg.remat:
            print(
                f"the train step needs {need / 2**30:.1f} GiB of the device's "
                f"{limit / 2**30:.1f} GiB: recompiling with per-layer remat"
            )
            module = self.model.module(self.state.params)
            module.remat = True
            self.model = ModelDef.split(module)[0]
            compiled = self._jit_train_step().lower(*args).compile()
            need = _memory_need(compiled)
        if need and limit:
            print(f"train step memory: {need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB")
        self._train_step = compiled

    # ---- checkpoints ------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        step = int(self.state.step)
        return {
            "config": self.cfg.name,
            "fingerprint": self.cfg.fingerprint(),
            "step": step,
            "data_step": step,  # the next batch is Batches(step): the data position is the step
            "train_tokens": len(self.data.train),
            "total_steps": self.total_steps,
            "init_from": self.init_from,
        }

    def _restore(self, step: int) -> None:
        state, meta = self.checkpoints.restore(step, self.state.to_dict())
        if meta["fingerprint"] != self.cfg.fingerprint():
            raise ValueError(
                f"checkpoint at step {step} was written by config {meta['config']!r} "
                f"({meta['fingerprint']}), not by this one ({self.cfg.fingerprint()})"
            )
        if meta["train_tokens"] != len(self.data.train):
            raise ValueError(
                f"checkpoint was trained on {meta['train_tokens']} tokens, this data has "
                f"{len(self.data.train)}: resuming would change the data order"
            )
        self.state = TrainState.from_dict(state)
        self.total_steps = meta["total_steps"]

    def save(self) -> None:
        """Checkpoint the current state (asynchronous; `fit` waits for it at the end)."""
        if self.checkpoints is not None:
            self.checkpoints.save(int(self.state.step), self.state.to_dict(), self._meta())

    # ---- evaluation and export -------------------------------------------------------------

    def evaluate(self) -> tuple[float, float]:
        """(held-out loss in nats per token, perplexity) over up to cfg.eval_tokens targets."""
        loss = float(self.evaluate_exits()[-1])
        return loss, _perplexity(loss)

    def evaluate_exits(self) -> np.ndarray:
        """Held-out loss (nats per token) at exits 1..L, f64 [L], the last being the full model's
        (just [1], the full model, unless `eval_exits`)."""
        total, count = jnp.zeros(()), jnp.zeros(())
        for tokens, weights in eval_batches(
            self.data.heldout, self.cfg.batch_size, self.cfg.seq_len, self.cfg.eval_tokens
        ):
            tokens = jax.device_put(tokens, self.by_row)
            weights = jax.device_put(weights, self.by_row)
            nll, n = self._eval_step(self.state.params, tokens, weights)
            total, count = total + nll, count + n
        return np.atleast_1d(np.asarray(total / count, np.float64))

    def module(self, dtype=None) -> Transformer:
        """The model with the current weights (float32 master copy; compute in `dtype`)."""
        module = self.model.module(jax.device_get(self.state.params))
        module.dtype = jnp.dtype(dtype or self.dtype)
        return module

    # ---- the loop --------------------------------------------------------------------------

    def fit(
        self, *, time_budget_s: float | None = None, stop_after: int | None = None
    ) -> TrainResult:
        """Train to the schedule's end (or the time budget's deadline); evaluate; save.

        time_budget_s: wall-clock budget of this call, compile and evaluations included.
        stop_after: leave the loop once this many steps are done, without the final evaluation
        or save, as if the process had been killed there (tests of resume use it).
        """
        cfg, start_time = self.cfg, time.perf_counter()
        deadline = start_time + time_budget_s if time_budget_s else None
        if self.total_steps is None and not time_budget_s:
            self.total_steps = cfg.steps
        first = step = int(self.state.step)
        self._compile()
        bar = tqdm(
            total=self.total_steps or cfg.steps,
            initial=first,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        pending: list[dict[str, jax.Array]] = []  # metrics not yet fetched from the device
        history: list[tuple[int, float]] = []
        steady_tokens, steady_seconds, paused = 0, 0.0, 0.0  # throughput after the first step
        window_start = probe_start = start_time
        compile_seconds, eval_seconds = 0.0, 0.0
        stopped_early = False
        last_loss, last_print = float("nan"), start_time

        total = lambda: self.total_steps or cfg.steps
        while step < total():
            if stop_after is not None and step >= stop_after:
                break
            budget_known = deadline is not None and self.total_steps is not None
            if budget_known and time.perf_counter() > deadline - eval_seconds - 1.0:
                stopped_early = True  # the estimate was optimistic: stop cleanly, then evaluate
                break
            tokens = jax.device_put(self.batches(step), self.by_row)
            lr = np.float32(learning_rate(step, total(), cfg))
            self.state, metrics = self._train_step(
                self.state, tokens, lr, self.teacher_params, np.int32(total())
            )
            pending.append(metrics)
            step += 1
            bar.update(1)

            if step == first + 1:  # the first step compiles: time it apart from the rest
                jax.block_until_ready(metrics)
                compile_seconds = time.perf_counter() - start_time
                window_start = probe_start = time.perf_counter()
                pending = []
            if self.total_steps is None and step == first + 1 + PROBE_STEPS:
                # Time budget: fix the schedule's length from the measured step time.
                jax.block_until_ready(metrics)
                step_seconds = (time.perf_counter() - probe_start) / PROBE_STEPS
                eval_start = time.perf_counter()
                loss, ppl = self.evaluate()  # also compiles the eval step
                eval_seconds = time.perf_counter() - eval_start
                paused += eval_seconds
                self.total_steps = self._plan(step, step_seconds, eval_seconds, deadline)
                bar.total = self.total_steps
                bar.write(
                    f"step {step}: {step_seconds * 1e3:.1f} ms/step; held-out loss {loss:.3f} "
                    f"(ppl {ppl:.1f}) in {eval_seconds:.1f}s; a schedule of {self.total_steps} "
                    f"steps fits the {time_budget_s:.0f}s budget"
                )
            if pending and (step % cfg.log_every == 0 or step == total()):
                values = jax.device_get(pending)
                pending = []
                now = time.perf_counter()
                steady_seconds += now - window_start - paused
                steady_tokens += len(values) * cfg.tokens_per_step
                window_start, paused = now, 0.0
                last_loss = float(np.mean([v["loss"] for v in values]))
                history.append((step, last_loss))
                rate = steady_tokens / max(steady_seconds, 1e-9)
                postfix = {"loss": f"{last_loss:.3f}", "tok/s": f"{rate:,.0f}", "lr": f"{lr:.2e}"}
                if self.peak_flops:
                    postfix["mfu"] = f"{self.flops_per_token * rate / self.peak_flops:.1%}"
                bar.set_postfix(postfix, refresh=False)
                if not self.progress and (now - last_print >= PRINT_EVERY_S or step == total()):
                    last_print = now
                    fields = " ".join(f"{k} {v}" for k, v in postfix.items())
                    print(f"step {step}/{total()} {fields} ({now - start_time:.0f}s)", flush=True)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total():
                eval_start = time.perf_counter()
                losses = self.evaluate_exits()
                paused += time.perf_counter() - eval_start
                loss, ppl = float(losses[-1]), _perplexity(float(losses[-1]))
                exits = tuple(_perplexity(float(x)) for x in losses) if self.eval_exits else ()
                bar.write(
                    f"step {step}: held-out loss {loss:.4f} (ppl {ppl:.2f})"
                    + (f"; ppl by exit {format_exits(exits)}" if exits else "")
                )
            if cfg.save_every and step % cfg.save_every == 0 and step < total():
                save_start = time.perf_counter()
                self.save()
                paused += time.perf_counter() - save_start
        if stop_after is not None and step >= stop_after and step < total():
            # Simulated kill: no final evaluation or save (only the periodic saves survive).
            bar.close()
            if self.checkpoints is not None:
                self.checkpoints.wait()
            return self._result(
                history,
                last_loss,
                0,
                0.0,
                compile_seconds,
                start_time,
                stopped_early=True,
                evaluate=False,
            )
        bar.close()
        if pending:  # the loop left between two logging points
            values = jax.device_get(pending)
            last_loss = float(np.mean([v["loss"] for v in values]))
            history.append((step, last_loss))
        self.save()
        if self.checkpoints is not None:
            self.checkpoints.wait()
        return self._result(
            history,
            last_loss,
            steady_tokens,
            steady_seconds,
            compile_seconds,
            start_time,
            stopped_early=stopped_early,
            evaluate=True,
        )

    def _plan(self, step: int, step_seconds: float, eval_seconds: float, deadline: float) -> int:
        """The schedule length that ends the run (periodic and final evaluations included)
        `BUDGET_MARGIN` before the deadline; never more than cfg.steps, never below `step`."""
        left = (deadline - time.perf_counter()) * (1.0 - BUDGET_MARGIN) - eval_seconds
        per_step = step_seconds + (eval_seconds / self.cfg.eval_every if self.cfg.eval_every else 0)
        planned = step + max(0, int(left / per_step))
        if planned <= self.cfg.warmup_steps:
            print(
                f"warning: the time budget allows only {planned} steps, within the "
                f"{self.cfg.warmup_steps}-step warmup"
            )
        return max(step, min(self.cfg.steps, planned))

    def _result(
        self,
        history,
        last_loss,
        tokens,
        seconds,
        compile_seconds,
        start_time,
        *,
        stopped_early,
        evaluate,
    ) -> TrainResult:
        cfg, step = self.cfg, int(self.state.step)
        losses = self.evaluate_exits() if evaluate else np.full(1, np.nan)
        loss, ppl = float(losses[-1]), _perplexity(float(losses[-1]))
        exit_losses = tuple(float(x) for x in losses) if self.eval_exits and evaluate else ()
        rate = tokens / seconds if seconds > 0 else 0.0
        mfu = self.flops_per_token * rate / self.peak_flops if self.peak_flops and rate else None
        return TrainResult(
            config=cfg.name,
            steps=step,
            total_steps=self.total_steps or cfg.steps,
            tokens=step * cfg.tokens_per_step,
            epochs=self.batches.epochs(step),
            final_loss=last_loss,
            heldout_loss=loss,
            heldout_ppl=ppl,
            unigram_entropy=self.unigram,
            tokens_per_second=rate,
            mfu=mfu,
            peak_flops=self.peak_flops,
            peak_source=self.peak_source,
            flops_per_token=self.flops_per_token,
            params=cfg.model.num_params(),
            matmul_params=matmul_params(cfg.model),
            devices=len(self.devices),
            compute_dtype=self.dtype.name,
            compile_seconds=compile_seconds,
            wall_seconds=time.perf_counter() - start_time,
            stopped_early=stopped_early,
            history=tuple(history),
            exit_heldout_loss=exit_losses,
            exit_heldout_ppl=tuple(_perplexity(x) for x in exit_losses),
        )


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 80.0))  # nan stays nan


def _load_initial(directory: str | os.PathLike, cfg: TrainConfig, mesh=None) -> Transformer:
    """The float32 module of an HF checkpoint directory (sharded over `mesh` if given), checked
    against cfg.model."""
    from specdec.checkpoint import load_transformer

    module = load_transformer(directory, dtype=jnp.float32, attention="xla", mesh=mesh)
    if module.config != cfg.model:
        diff = {
            f.name: (getattr(module.config, f.name), getattr(cfg.model, f.name))
            for f in dataclasses.fields(cfg.model)
            if getattr(module.config, f.name) != getattr(cfg.model, f.name)
        }
        raise ValueError(
            f"{directory} holds a model whose config differs from {cfg.name!r}'s "
            f"(field: (checkpoint, config)): {diff}; train with the checkpoint's config "
            f"(train.run.config_from_args does so for --init-from)"
        )
    return module


def _memory_need(compiled) -> int | None:
    """Peak device bytes of a compiled step (arguments + outputs not aliased + temporaries)."""
    try:
        m = compiled.memory_analysis()
        return (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
    except Exception:
        return None


def _memory_limit(device) -> int | None:
    try:
        return (device.memory_stats() or {}).get("bytes_limit")
    except Exception:
        return None


class _CheckpointStore:
    """Orbax CheckpointManager holding {step, params, opt} plus a JSON record of the run."""

    def __init__(self, directory: Path, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        if step in self.manager.all_steps():
            return
        args = self._ocp.args
        self.manager.save(
            step, args=args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta))
        )

    def restore(self, step: int, like: dict) -> tuple[dict, dict]:
        """The state saved at `step`, placed like `like` (same shapes, dtypes and shardings)."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        args = self._ocp.args
        restored = self.manager.restore(
            step,
            args=args.Composite(state=args.StandardRestore(abstract), meta=args.JsonRestore()),
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()
