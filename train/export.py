"""Export a trained model as an ordinary HF checkpoint directory, and reference logits for checks.

A directory holds config.json + model.safetensors (`specdec.checkpoint.save_transformer`), the
tokenizer files copied from the tokenizer directory, generation_config.json, and training.json
(what produced it). `specdec.load(dir)` and `transformers.AutoModelForCausalLM.from_pretrained(dir)`
both load it; `train/check_hf_load.py` compares transformers' logits with ours:

    python -m train.export logits DIR --out DIR/reference.npz      # our float32 logits
    /tmp/torchenv/bin/python train/check_hf_load.py DIR DIR/reference.npz
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from specdec.checkpoint import save_transformer
from specdec.model import Transformer
from train.chat import render_chat
from train.configs import BOS_ID, EOS_ID, PAD_ID
from train.files import make_readable

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
REFERENCE_TEXT = render_chat(
    [("user", "Write a haiku about speculative decoding."), ("assistant", "Draft, verify, accept")]
)


def export(
    module: Transformer,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    info: dict | None = None,
) -> Path:
    """Write the HF checkpoint directory `out_dir` (replacing it) and return its path.

    dtype: the stored weights' dtype ("bfloat16" halves the size). info: written to training.json.
    The directory is assembled beside `out_dir` and renamed into place, so a reader never sees a
    half-written checkpoint.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = [n for n in TOKENIZER_FILES if not (Path(tokenizer_dir) / n).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer directory {tokenizer_dir} lacks {missing}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_transformer(module, tmp, dtype=jnp.dtype(dtype))  # jnp.dtype knows "bfloat16"
        for name in TOKENIZER_FILES:
            shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
        generation = {
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
            "do_sample": False,
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if info is not None:
            (tmp / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        make_readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def reference_logits(
    model_dir: str | os.PathLike, out_file: str | os.PathLike, text: str = REFERENCE_TEXT
) -> np.ndarray:
    """Save {text, input_ids [1, T], logits float32 [1, T, V]} of a float32 forward as .npz."""
    import specdec

    model = specdec.load(model_dir, dtype="float32", attention="xla")
    ids = np.asarray([model.tokenizer.encode(text)], np.int32)
    logits = np.asarray(model.logits(ids))
    np.savez(out_file, text=np.array(text), input_ids=ids, logits=logits)
    return logits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    logits = sub.add_parser("logits", help="save our float32 logits of a checkpoint as .npz")
    logits.add_argument("model_dir")
    logits.add_argument("--out", required=True)
    logits.add_argument("--text", default=REFERENCE_TEXT)
    args = parser.parse_args(argv)
    out = reference_logits(args.model_dir, args.out, args.text)
    print(f"saved logits {out.shape} to {args.out}")


if __name__ == "__main__":
    main()
