#!/usr/bin/env bash
# Build the MONAI Deploy environment (if missing) and run the app end to end on a generated DICOM CT series.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export DEPLOY_ENV=${DEPLOY_ENV:-/tmp/deployenv} TAT_DEPLOY_ENV=${DEPLOY_ENV:-/tmp/deployenv}
[ -x "$DEPLOY_ENV/bin/python" ] || bash "$REPO/scripts/build_deploy_env.sh"   # ~4 min here
cd "$REPO"
OMP_NUM_THREADS=1 "${PYTHON:-$REPO/.venv/bin/python}" -m pytest -q -p no:cacheprovider tests/apps/test_deploy_app.py
