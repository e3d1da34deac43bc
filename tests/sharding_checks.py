"""Multi-device checks on 8 CPU devices, run by tests/test_sharding.py in a subprocess.

jax fixes its device count when it starts, and the pytest process already started it with one
device; this script is executed with XLA_FLAGS=--xla_force_host_platform_device_count=8 and
prints one JSON line per check: {"check": name, ...measured values}. The test file holds the
assertions. Run it by hand with:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=.:tests \
        .venv/bin/python tests/sharding_checks.py [CHECK ...]

Checks: generate (meshes 1x8, 2x4, 8x1: plain, DraftModel, EAGLE-3 greedy float32 tokens against
one device), kernel (the Pallas kernel in interpret mode run per shard), stats (chi-square of
sampled speculative output on 2x4), train (train.trainer and train.eagle step losses against
one device), errors (clear messages for bad meshes and sizes).
"""

import json
import os
import re
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# XLA:CPU's backend optimisations buy nothing on micro models (as in tests/conftest.py).
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] += " --xla_llvm_disable_expensive_passes=true"

import jax
import numpy as np

import specdec
from drafters import DraftModel, Eagle
from specdec import sharding
from specdec.checkpoint import save_transformer
from specdec.config import tiny_config
from trees import Chain, Static

MESHES = ((1, 8), (2, 4), (8, 1))  # (data, model)
# Head counts that divide every model axis above: N 16, K 8 (GQA groups of 2).
TARGET = tiny_config(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_heads=16,
    num_kv_heads=8,
    head_dim=8,
    initializer_range=0.2,
)
DRAFT = tiny_config(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=8,
    num_kv_heads=8, head_dim=4, initializer_range=0.2,
)  # fmt: skip
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11], [3, 1, 4, 1, 5, 9, 2, 6], [5], [60, 61], [2, 7, 1],
           [100, 101, 102, 103]]  # fmt: skip
NEW_TOKENS = 12
STAT_SAMPLES = 4_000
EAGLE_TREE = ((0,), (1,), (0, 0), (1, 0), (0, 0, 0))


def emit(check: str, **values) -> None:
    print(json.dumps({"check": check, **values}), flush=True)


def target_dir() -> str:
    directory = os.path.join(tempfile.mkdtemp(prefix="sharding-"), "target")
    save_transformer(specdec.Model.random(TARGET, seed=3).module(), directory)
    return directory


def tokens_of(out) -> list[list[int]]:
    return out.sequences()


def check_generate(directory: str) -> None:
    """Greedy tokens on every mesh == one device, for plain, DraftModel and EAGLE-3 drafting."""
    one = specdec.load(directory, attention="xla")
    draft_one = specdec.Model.random(DRAFT, seed=5, attention="xla")
    eagle_one = Eagle.random(one, version=3, seed=2, draft_vocab=64)
    runs = {
        "plain": dict(),
        "draft": dict(drafter=DraftModel(draft_one), policy=Chain(3)),
        "eagle3": dict(drafter=eagle_one, policy=Static(EAGLE_TREE)),
    }
    reference = {
        name: specdec.generate(one, PROMPTS, max_new_tokens=NEW_TOKENS, **kw)
        for name, kw in runs.items()
    }
    for data, model in MESHES:
        mesh = sharding.make_mesh(data, model)
        start = time.perf_counter()
        sharded = specdec.load(directory, attention="xla", mesh=mesh)
        qkv = sharded.net.params["layers"][0]["attn"]["qkv"][...]
        # The drafter on a mesh: sharded the same way on 2x4, replicated (built on one device,
        # placed by generate) on the others.
        draft = (
            specdec.Model.random(DRAFT, seed=5, attention="xla", mesh=mesh)
            if (data, model) == (2, 4)
            else draft_one
        )
        eagle = Eagle.random(sharded, version=3, seed=2, draft_vocab=64)
        drafters = {
            "plain": dict(),
            "draft": dict(drafter=DraftModel(draft), policy=Chain(3)),
            "eagle3": dict(drafter=eagle, policy=Static(EAGLE_TREE)),
        }
        weights = {tuple(x.shape) for x in jax.tree.leaves(sharded.net.params)}
        for name, kw in drafters.items():
            out = specdec.generate(sharded, PROMPTS, max_new_tokens=NEW_TOKENS, **kw)
            gathers = float_all_gathers()
            emit(
                "generate",
                mesh=f"{data}x{model}",
                drafter=name,
                equal=tokens_of(out) == tokens_of(reference[name]),
                tau=out.stats.tau,
                reference_tau=reference[name].stats.tau,
                qkv_devices=len(qkv.sharding.device_set),
                qkv_shard=list(qkv.addressable_shards[0].data.shape),  # [D, K / model, G + 2, H]
                # all-gathers of whole weights or of K/V blocks [B, T, K, H] (rank 4): none
                weight_gathers=[g for g in gathers if g in weights],
                kv_gathers=[g for g in gathers if len(g) == 4],
                all_reduces=compiled_text().count(" all-reduce("),
                seconds=round(time.perf_counter() - start, 1),
            )


def compiled_text() -> str:
    """HLO of the decode loop generate compiled or reused last (its cache is LRU-ordered)."""
    from specdec.engine import generate as engine

    return next(reversed(engine._LOOPS._loops.values())).as_text()


def float_all_gathers() -> list[tuple[int, ...]]:
    """Result shapes of the floating-point all-gathers in the last compiled decode loop."""
    found = re.findall(r"= (?:f32|bf16|f16)\[([\d,]*)\]\S* all-gather\(", compiled_text())
    return [tuple(int(d) for d in dims.split(",") if d) for dims in found]


def check_kernel(directory: str) -> None:
    """The Pallas kernel (interpret mode) under shard_map on a 2x4 mesh == XLA on one device."""
    one = specdec.load(directory, attention="xla")
    mesh = sharding.make_mesh(2, 4)
    sharded = specdec.load(directory, attention="interpret", mesh=mesh)
    prompts, new = PROMPTS[:2], 4
    want = specdec.generate(one, prompts, max_new_tokens=new)
    got = specdec.generate(sharded, prompts, max_new_tokens=new)
    emit("kernel", equal=tokens_of(got) == tokens_of(want))


def check_stats() -> None:
    """Sampled speculative output on a 2x4 mesh keeps the target's law (chi-square)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from stats import (
        STAT_LENGTH,
        STAT_PROMPT,
        chi_square_pvalue,
        exact_sequence_probs,
        sequence_index,
    )

    mesh = sharding.make_mesh(2, 4)
    small = dict(vocab_size=4, hidden_size=16, intermediate_size=32, num_heads=4, head_dim=4)
    target = specdec.Model.random(
        tiny_config(**small, num_kv_heads=4, initializer_range=0.8), seed=11, mesh=mesh
    )
    draft = specdec.Model.random(
        tiny_config(**small, num_kv_heads=4, initializer_range=1.5), seed=12, mesh=mesh
    )
    # tests/stats.py's harness with fewer samples (CPU time): 64 cells, ~60 expected in each.
    params = specdec.SamplingParams.create(temperature=1.0)
    one = specdec.Model.random(target.config, seed=11)  # the same weights on one device
    exact = exact_sequence_probs(one, STAT_PROMPT, STAT_LENGTH, params)
    run = lambda target, draft: specdec.generate(
        target,
        [STAT_PROMPT] * STAT_SAMPLES,
        max_new_tokens=STAT_LENGTH,
        drafter=DraftModel(draft),
        policy=Chain(2, "sample"),
        seed=0,
        temperature=1.0,
    )
    out = run(target, draft)
    # The same seed on one device: the partitionable PRNG draws the same numbers on any mesh.
    single = run(one, specdec.Model.random(draft.config, seed=12))
    counts = np.bincount(sequence_index(out.tokens, 4), minlength=4**STAT_LENGTH)
    emit(
        "stats",
        pvalue=chi_square_pvalue(counts, exact),
        tau=out.stats.tau,
        same_samples_as_one_device=float(np.mean(np.all(out.tokens == single.tokens, axis=1))),
        # random init on a mesh draws each parameter straight into its sharding: same values
        same_weights_as_one_device=all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(target.net), jax.tree.leaves(one.net), strict=True)
        ),
        lm_head_spec=_spec(target, "lm_head"),
    )


def _spec(model, name) -> list:
    return list(model.net.params[name][...].sharding.spec)  # e.g. [None, "model"]


def check_train() -> None:
    """Step losses of train.trainer (target) and train.eagle on meshes == one device, 1e-5."""
    from train.configs import TrainConfig, _llama
    from train.eagle import EagleConfig, EagleTrainer, build_data
    from train.steps import learning_rate
    from train.tokenizer import TokenizerConfig
    from train.trainer import TrainData, Trainer

    rng = np.random.default_rng(0)
    stream = rng.integers(6, 128, size=20_000).astype(np.uint16)
    cfg = TrainConfig(
        name="micro-tp",
        model=_llama(512, 64, 2, 8, 8, 128),
        tokenizer=TokenizerConfig(vocab_size=512),
        batch_size=8,
        seq_len=16,
        steps=2,
        lr=1e-2,
        warmup_steps=1,
        compute_dtype="float32",
        eval_tokens=256,
        log_every=1,
    )
    data = TrainData(train=stream, heldout=stream[:2000])

    def target_losses(mesh):
        trainer = Trainer(cfg, data, progress=False, devices=jax.devices()[:1], mesh=mesh)
        trainer._compile()
        losses = []
        for step in range(cfg.steps):
            tokens = jax.device_put(trainer.batches(step), trainer.by_row)
            lr = np.float32(learning_rate(step, cfg.steps, cfg))
            trainer.state, metrics = trainer._train_step(
                trainer.state, tokens, lr, trainer.teacher_params, np.int32(cfg.steps)
            )
            losses.append(float(metrics["loss"]))
        return losses, float(trainer.evaluate()[0])

    base = target_losses(None)
    for data_size, model_size in ((2, 4), (1, 8)):
        got = target_losses(sharding.make_mesh(data_size, model_size))
        emit(
            "train_target",
            mesh=f"{data_size}x{model_size}",
            losses=got[0],
            reference=base[0],
            heldout=got[1],
            reference_heldout=base[1],
        )

    target_one = specdec.Model.random(TARGET, seed=3, attention="xla")
    ecfg = EagleConfig(
        version=3, batch_size=8, seq_len=16, steps=2, warmup_steps=1, ttt_steps=2,
        draft_vocab=64, target_layers=(0, 1), save_every=0, log_every=1, lr=3e-3,
    )  # fmt: skip
    edata = build_data(stream, stream[:2000], None, ecfg, TARGET.vocab_size)

    def eagle_losses(mesh):
        target = target_one
        if mesh is not None:
            target = specdec.Model.random(TARGET, seed=3, attention="xla", mesh=mesh)
        trainer = EagleTrainer(
            ecfg, target, edata, progress=False, devices=jax.devices()[:1], mesh=mesh
        )
        losses = []
        for step in range(ecfg.steps):
            trainer.state, metrics = trainer._train_step(
                trainer.state,
                trainer.target_net,
                trainer.draft_ids,
                trainer._put(trainer.batches(step), np.int32),
                trainer._put(trainer.mask_batches(step), np.float32),
                np.float32(learning_rate(step, ecfg.steps, ecfg)),
            )
            losses.append(float(metrics["loss"]))
        return losses

    base = eagle_losses(None)
    for data_size, model_size in ((2, 4),):
        got = eagle_losses(sharding.make_mesh(data_size, model_size))
        emit("train_eagle", mesh=f"{data_size}x{model_size}", losses=got, reference=base)


def check_errors(directory: str) -> None:
    """Each bad request raises an error whose message names the problem."""
    from jax.sharding import Mesh

    cases = {
        "axis_names": lambda: specdec.load(
            directory, mesh=Mesh(np.array(jax.devices()).reshape(2, 4), ("batch", "tp"))
        ),
        "not_a_mesh": lambda: specdec.load(directory, mesh="2x4"),
        "heads": lambda: specdec.Model.random(
            tiny_config(num_heads=4, num_kv_heads=2), mesh=sharding.make_mesh(1, 8)
        ),
        "too_many_devices": lambda: sharding.make_mesh(4, 4),
        "malformed": lambda: sharding.parse_mesh("2by4"),
        "batch": lambda: specdec.generate(
            specdec.load(directory, attention="xla", mesh=sharding.make_mesh(8, 1)),
            PROMPTS[:3],
            max_new_tokens=2,
        ),
    }
    for name, fn in cases.items():
        try:
            fn()
            emit("error", case=name, raised=None, message="")
        except (ValueError, TypeError) as err:
            emit("error", case=name, raised=type(err).__name__, message=str(err))


def main(argv: list[str]) -> int:
    wanted = argv or ["errors", "generate", "kernel", "stats", "train"]
    emit("devices", count=jax.device_count())
    directory = target_dir()
    checks = {
        "generate": lambda: check_generate(directory),
        "kernel": lambda: check_kernel(directory),
        "stats": check_stats,
        "train": check_train,
        "errors": lambda: check_errors(directory),
    }
    status = 0
    for name in wanted:
        start = time.perf_counter()
        try:
            checks[name]()
        except Exception:  # report and go on: the test names the check that crashed
            emit("crash", name=name, traceback=traceback.format_exc())
            status = 1
        emit("timing", name=name, seconds=round(time.perf_counter() - start, 1))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
