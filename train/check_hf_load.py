"""Check an exported checkpoint with HF transformers: load it and compare logits with ours.

Runs in an environment with torch + transformers (not specdec's: torch is no dependency of it),
e.g. a Python 3.11 venv:

    /root/.pyenv/versions/3.11.7/bin/python -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 transformers safetensors numpy
    .venv/bin/python -m train.export logits DIR --out /tmp/ref.npz     # our side (float32)
    /tmp/torchenv/bin/python train/check_hf_load.py DIR /tmp/ref.npz [--tolerance 1e-4]

It loads DIR with AutoModelForCausalLM (float32) and AutoTokenizer, checks that the tokenizer
gives the same ids for the saved text, prints the max |logit difference| and exits non-zero when
it exceeds the tolerance.
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir")
    parser.add_argument("reference", help=".npz with text, input_ids [1, T], logits [1, T, V]")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)

    reference = np.load(args.reference)
    text, ids, ours = str(reference["text"]), reference["input_ids"], reference["logits"]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids_match = hf_ids == ids[0].tolist()
    print(f"tokenizer: {type(tokenizer).__name__}, {len(hf_ids)} ids, match ours: {ids_match}")

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        theirs = model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    diff = float(np.abs(theirs - ours).max())
    print(f"model: {type(model).__name__}, logits {theirs.shape}, max |logit diff| = {diff:.3e}")
    same_argmax = bool((theirs.argmax(-1) == ours.argmax(-1)).all())
    print(f"argmax agrees at every position: {same_argmax}")
    ok = ids_match and diff <= args.tolerance
    print("OK" if ok else f"FAILED (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
