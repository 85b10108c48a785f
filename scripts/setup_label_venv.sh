#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment that runs the MONAI Label app.
#
#   scripts/setup_label_venv.sh [DIR]      DIR defaults to $R2GEN_LABEL_VENV, else <repo>/.venv-label
#
# MONAI Label 0.8.5 serves with monai 1.6 only beside pydicom 2.4.4, dicomweb-client < 0.60 and pynetdicom < 3, so it
# gets a venv of its own; monai-r2gen is installed there too (editable), and must therefore run on pydicom 2.4.
# Idempotent: a stamp file records what was installed; a second run with the same inputs only checks the imports.
# Set PYTHON to choose the interpreter (default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${R2GEN_LABEL_VENV:-$REPO/.venv-label}}"
PY="${PYTHON:-python3}"
STAMP="$DIR/.monai-r2gen-label"

PINS=(torch==2.13.0 monailabel==0.8.5 pydicom==2.4.4 "dicomweb-client<0.60" "pynetdicom<3")
WANT="$(cat "$REPO/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

check() {
    "$DIR/bin/python" - <<'PY'
import monailabel, pydicom, torch
import monai_r2gen.data.studies, monai_r2gen.data.transforms
assert pydicom.__version__.startswith("2.4"), pydicom.__version__
print(f"label venv ok: monailabel {monailabel.__version__}, pydicom {pydicom.__version__}, torch {torch.__version__}")
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && check; then
    exit 0
fi

start=$SECONDS
echo "== creating the MONAI Label venv in $DIR =="
[[ -x "$DIR/bin/python" ]] || "$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
# torch first (the local CPU wheel), then MONAI Label with its pins, then monai-r2gen and its dependencies in one
# resolver run so that the pins hold (pyproject allows pydicom >= 2.4).
"$DIR/bin/python" -m pip install --quiet "${PINS[0]}"
"$DIR/bin/python" -m pip install --quiet "${PINS[@]}" -e "$REPO"
# monailabel pulls torchvision (for sam2, unused here); the only wheel on offer is built for another torch and fails
# at import ("operator torchvision::nms does not exist"), which breaks anything that probes for it (transformers).
"$DIR/bin/python" -m pip uninstall --quiet --yes torchvision || true
check
echo "$WANT" > "$STAMP"
echo "== MONAI Label venv ready in $((SECONDS - start)) s =="
