#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter, or fail with a clear message.
# jax >= 0.11 needs Python >= 3.12; on 3.11 `pip install jax` silently gives an old 0.10.x.
set -u
candidates=()
[ -n "${PYTHON312:-}" ] && candidates+=("$PYTHON312")
candidates+=(python3.12)
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for d in "$root"/versions/3.12*; do [ -x "$d/bin/python" ] && candidates+=("$d/bin/python"); done
fi
for d in "$HOME"/.pyenv/versions/3.12* /usr/local/bin/python3.12 /usr/bin/python3.12; do
  [ -x "$d/bin/python" ] && candidates+=("$d/bin/python")
  [ -x "$d" ] && [ -f "$d" ] && candidates+=("$d")
done
for c in "${candidates[@]}"; do
  out=$("$c" -c 'import sys; print(sys.executable if sys.version_info[:2] == (3, 12) else "")' 2>/dev/null) || continue
  if [ -n "$out" ]; then echo "$out"; exit 0; fi
done
echo "error: no Python 3.12 interpreter found (tried: ${candidates[*]})." >&2
echo "specdec needs Python 3.12 (jax >= 0.11 requires it). Install one (e.g. 'pyenv install 3.12')" >&2
echo "or point PYTHON312=/path/to/python3.12 at it, then re-run." >&2
exit 1
