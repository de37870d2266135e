#!/usr/bin/env bash
# Fresh virtual environment with only the packages metadata.json lists (no `custom`, no system site-packages).
# Usage: scripts/build_bundle_env.sh [ENV_DIR] [META_FILE]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ENV=${1:-/tmp/tat_bundle_env}
META=${2:-$REPO/bundle/configs/metadata.json}
PY=${PYTHON:-python3}
[ -x "$ENV/bin/python" ] || "$PY" -m venv "$ENV"
mapfile -t REQS < <("$PY" - "$META" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"torch=={m['pytorch_version']}")
print(f"monai=={m['monai_version']}")
print(f"numpy=={m['numpy_version']}")
for k, v in m.get("required_packages_version", {}).items():
    print(f"{k}=={v}")
PYEOF
)
"$ENV/bin/pip" install -q --disable-pip-version-check "${REQS[@]}"
echo "installed into $ENV: ${REQS[*]}"
