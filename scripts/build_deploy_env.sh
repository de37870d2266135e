#!/usr/bin/env bash
# Build the separate MONAI Deploy environment (never the project .venv).
set -euo pipefail
ENV=${DEPLOY_ENV:-/tmp/deployenv}
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$ENV/bin/python" ] || python3 -m venv "$ENV"
"$ENV/bin/pip" install -q --upgrade pip
"$ENV/bin/pip" install -q /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl 2>/dev/null || "$ENV/bin/pip" install -q "torch==2.13.0"
# the SDK (holoscan) + highdicom (without it `import monai` fails once the SDK is installed, measured)
"$ENV/bin/pip" install -q "monai-deploy-app-sdk==4.0.0" "monai==1.6.1" highdicom
# the bundle's own required packages (metadata.json), which custom/ imports
mapfile -t REQS < <(python3 -c "import json,sys; m=json.load(open('$REPO/bundle/configs/metadata.json')); print('\n'.join(f'{k}=={v}' for k,v in m['required_packages_version'].items()))")
"$ENV/bin/pip" install -q "${REQS[@]}"
"$ENV/bin/pip" install -q --no-deps -e "$REPO"
"$ENV/bin/python" -c "import monai.deploy, monai, highdicom, torch; print('deploy ok', monai.__version__, torch.__version__)"
