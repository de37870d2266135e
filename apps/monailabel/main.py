"""MONAI Label app serving the TAT bundle's restoration as infer model `tat_restore`.

    monailabel start_server --app apps/monailabel --studies /data/images --host 127.0.0.1 --port 8000 \
        --conf bundle_root bundle [--conf modality CT] [--conf tat_override '{"network_def#dim": 8}']

Then: POST /infer/tat_restore?image=<id>&output=image with params {"modality": "CT"} returns the restored NIfTI.
Options (inference.json's "Is it real?" keys, defaults from inference.json then tat_override, ``--conf <name>
<value>`` for the app's defaults, request params per call): data_consistency, kspace_factor, data_consistency_mode,
task_check, difference (see lib/tat_restore.py).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lib.tat_restore import REQUEST_OPTIONS, TATRestore
from monailabel.interfaces.app import MONAILabelApp

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundle_root = os.path.abspath(conf.get("bundle_root", str(REPO / "bundle")))
        self.modality = conf.get("modality") or None
        self.override = json.loads(conf.get("tat_override", "{}") or "{}")
        self.options = {k: conf[k] for k in REQUEST_OPTIONS if conf.get(k) not in (None, "")}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="TAT restoration",
            description="TAT all-in-one medical image restoration (MONAI bundle)",
            version="0.1.0",
        )

    def init_infers(self):
        task = TATRestore(self.bundle_root, override=self.override, modality=self.modality, options=self.options)
        if not task.is_valid():
            logger.warning(f"{self.bundle_root}: no configs/inference.json or models/model.pt; tat_restore disabled")
            return {}
        return {"tat_restore": task}

    def init_trainers(self):
        return {}

    def init_strategies(self):
        return {}

    def init_scoring_methods(self):
        return {}
