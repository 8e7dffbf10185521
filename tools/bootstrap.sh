#!/usr/bin/env bash
# Creates / updates the project's virtualenv and installs the pinned stack (see README "Set-up").
#
#   VENV          virtualenv folder                       (default: .venv)
#   PYTHON        interpreter used to create it           (default: python3)
#   TORCH_SPEC    what to install when the venv has no torch (default: torch==2.13.0, the CPU wheel here)
#   SYSTEM_SITE   1 = create the venv with --system-site-packages, so a torch already installed
#                 on the machine (a CUDA build, say) is used and kept       (default: 0)
#   WHEEL_CACHE   where the fairseq-fixed wheel is built once and cached    (default: .cache/wheels)
#
# Whatever torch the venv ends up with is pinned (PIP_CONSTRAINT) for every later pip call, so
# no dependency can silently swap in another (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SYSTEM_SITE=${SYSTEM_SITE:-0}
WHEEL_CACHE=${WHEEL_CACHE:-.cache/wheels}
FAIRSEQ_SPEC=${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}
EXTRAS=${EXTRAS:-test}
STAMP="$VENV/.maeast-installed"

say() { echo "[bootstrap] $*" >&2; }

# Skip everything when the venv is already up to date with the project's install files.
want=$(cat setup.cfg pyproject.toml tools/bootstrap.sh 2>/dev/null | sha1sum | cut -c1-16)-$EXTRAS
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  if [ "$SYSTEM_SITE" = 1 ]; then "$PYTHON" -m venv --system-site-packages "$VENV"; else "$PYTHON" -m venv "$VENV"; fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if "$PY" -c "import torch" 2>/dev/null; then
  say "keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  say "installing $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")
mkdir -p "$VENV"
echo "torch==$TORCH_VERSION" > "$VENV/constraints.txt"
export PIP_CONSTRAINT="$PWD/$VENV/constraints.txt"
say "torch pinned to $TORCH_VERSION for every later pip call ($PIP_CONSTRAINT)"

"${PIP[@]}" "numpy<2.3" cython wheel "setuptools<81" packaging

if ! "$PY" -c "import fairseq" 2>/dev/null; then
  mkdir -p "$WHEEL_CACHE"
  whl=$(ls "$WHEEL_CACHE"/fairseq_fixed-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    say "building $FAIRSEQ_SPEC once (about 100 s on 2 cores; cached in $WHEEL_CACHE)"
    "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps "$FAIRSEQ_SPEC" -w "$WHEEL_CACHE"
    whl=$(ls "$WHEEL_CACHE"/fairseq_fixed-*.whl | head -n1)
  fi
  say "installing $(basename "$whl")"
  "${PIP[@]}" --no-deps "$whl"
fi

say "installing runtime dependencies and the project (editable)"
"${PIP[@]}" -e ".[$EXTRAS]"
if [[ ",$EXTRAS," == *",test,"* ]]; then
  # s3prl's packaging pulls in torchaudio & co; only s3prl.upstream.interfaces is used (in a test), so --no-deps
  "${PIP[@]}" --no-deps "s3prl==0.4.18"
fi
echo "$want" > "$STAMP"
say "ready: $VENV ($("$PY" -c 'import torch, fairseq; print("torch", torch.__version__, "fairseq", fairseq.__version__)'))"
