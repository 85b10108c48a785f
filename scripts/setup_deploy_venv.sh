#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment that runs and packages the MONAI Deploy application.
#
#   scripts/setup_deploy_venv.sh [DIR]     DIR defaults to $R2GEN_DEPLOY_VENV, else <repo>/.venv-deploy
#
# MONAI Deploy App SDK 4.0 installs into the `monai` namespace and is imported on every `import monai`, so it gets a
# venv of its own. `holoscan-cli` 4.0 provides the `monai-deploy package` command; `dicom3tools` provides `dciodvfy`
# (used by the tests to validate the DICOM SR). monai-r2gen is installed there too (editable).
# Idempotent: a stamp file records what was installed; a second run with the same inputs only checks the imports.
# Set PYTHON to choose the interpreter (default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${R2GEN_DEPLOY_VENV:-$REPO/.venv-deploy}}"
PY="${PYTHON:-python3}"
STAMP="$DIR/.monai-r2gen-deploy"

# holoscan-cli 4.0 is the last release with the `monai-deploy` command (4.6 has only `holoscan`, a different packager)
PINS=(torch==2.13.0 monai-deploy-app-sdk==4.0.0 highdicom dicom3tools "holoscan-cli==4.0.0")
WANT="$(cat "$REPO/pyproject.toml" "$REPO/monai_r2gen/apps/deploy/requirements.txt" "${BASH_SOURCE[0]}" \
        | sha256sum | cut -d' ' -f1)"

check() {
    "$DIR/bin/python" - <<'PY' 2> >(grep -v -i "stack size\|warnings.warn" >&2)
import monai.deploy, pydicom, torch
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator
import monai_r2gen.data.studies
print(f"deploy venv ok: monai-deploy {monai.deploy.__version__}, pydicom {pydicom.__version__}, torch {torch.__version__}")
PY
    [[ -x "$DIR/bin/dciodvfy" ]] || { echo "dciodvfy missing in $DIR/bin" >&2; return 1; }
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && check; then
    exit 0
fi

start=$SECONDS
echo "== creating the MONAI Deploy venv in $DIR =="
[[ -x "$DIR/bin/python" ]] || "$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet "${PINS[0]}"
"$DIR/bin/python" -m pip install --quiet "${PINS[@]}" -r "$REPO/monai_r2gen/apps/deploy/requirements.txt" -e "$REPO"
check
echo "$WANT" > "$STAMP"
echo "== MONAI Deploy venv ready in $((SECONDS - start)) s =="
