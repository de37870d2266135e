#!/usr/bin/env bash
# Build the separate MONAI Label environment (never the project .venv).
# MONAI Label 0.8.5 pins numpy 1.26 / jsonschema 3.2 and its bundle tasks import torchvision ops,
# which need a torch/torchvision pair that match (torch 2.14.1 + torchvision 0.29.1 here).
# Needs PyPI (monailabel and its ~100 dependencies); torch/torchvision come from the machine's local wheels where
# pip finds them. Measured 2026-12-01 on the 2-core CI machine kind: 19 min 46 s wall (3 min 40 s CPU: mostly
# downloading and unpacking; another env was building at the same time), 8.2 GB. CI (.ci/run) builds it in the
# background of the test suite.
set -euo pipefail
ENV=${MONAILABEL_ENV:-/tmp/mlenv}
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$ENV/bin/python" ] || python3 -m venv "$ENV"
"$ENV/bin/pip" install -q --upgrade pip
"$ENV/bin/pip" install -q "monailabel==0.8.5" "torch==2.14.1" "torchvision==0.29.1"
# monailabel 0.8.5's own deps clash: pip picks pydicom 3 (for pynetdicom/dicomweb-client 0.61) but pydicom-seg 0.4.1
# imports pydicom._storage_sopclass_uids (pydicom 2): start_server fails at import (measured). Pin the pydicom 2 side.
"$ENV/bin/pip" install -q "pydicom==2.4.4" "dicomweb-client<0.60"
# the bundle's own packages (the others are already there via monailabel) and the project, without its torch pin
"$ENV/bin/pip" install -q "pytorch-ignite" "scikit-image" "nibabel" "SimpleITK" "scipy" "pillow"
"$ENV/bin/pip" install -q --no-deps -e "$REPO"
"$ENV/bin/python" -c "import monailabel, torch, torchvision, monai; print('monailabel', monailabel.__version__, 'torch', torch.__version__, 'monai', monai.__version__)"
