"""The engine: the top layer. The decode loop (one jit), `generate` (validation, compile cache,
statistics) and, beside it, the CLI (`specdec.cli`). It builds on the core modules (model, cache,
sampling, verification, the drafter/policy contract) and is never imported by them."""
