#!/usr/bin/env bash
# Build the MONAI Label environment (if missing) and run the end-to-end test: a real `monailabel start_server`
# on 127.0.0.1 serving apps/monailabel, an HTTP infer call with a NIfTI CT, the restored image checked.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export MONAILABEL_ENV=${MONAILABEL_ENV:-/tmp/mlenv}
[ -x "$MONAILABEL_ENV/bin/monailabel" ] || bash "$REPO/scripts/build_monailabel_env.sh"   # ~12 min here
cd "$REPO"
OMP_NUM_THREADS=1 "${PYTHON:-$REPO/.venv/bin/python}" -m pytest -q -p no:cacheprovider tests/apps/test_monailabel_app.py
