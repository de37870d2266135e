# Copyright (c) MONAI Consortium
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The model zoo's unit test of this bundle (``ci/unit_tests/test_<name>.py`` in a zoo PR).

Not collected by this repository's pytest (no ``test_`` prefix): ``scripts/zoo_ci.py`` copies it into a zoo
layout and runs it with the zoo's ``ci/unit_tests/runner.py`` from the zoo root, where ``utils`` is the zoo's
``ci/unit_tests/utils.py`` and the bundle sits at ``models/<name>``. ConfigWorkflow with override dicts, as the
zoo's tests do: train (1 iteration), evaluate (``run`` of train.json + evaluate.json), infer.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from parameterized import parameterized
from utils import check_workflow

BUNDLE_NAME = os.path.splitext(os.path.basename(__file__))[0][len("test_") :]
BUNDLE_ROOT = os.path.join("models", BUNDLE_NAME)

TINY_NET = {  # a tiny TAT (the published one has 41.7 M parameters)
    "network_def#dim": 8,
    "network_def#num_blocks": [1, 1, 1, 1],
    "network_def#num_refinement_blocks": 1,
    "network_def#train_patch_size": 16,
}

TEST_CASE_TRAIN = [
    {
        "bundle_root": BUNDLE_ROOT,
        **TINY_NET,
        "num_iterations": 1,
        "val_interval": 1,
        "log_interval": 1,
        "patch_size": 16,
        "samples_per_task": 1,
        "num_workers": 0,
        "train#dataset#cache_rate": 0.0,
        "validate#dataset#cache_rate": 0.0,
    }
]
TEST_CASE_INFER = [{"bundle_root": BUNDLE_ROOT, **TINY_NET, "modality": "CT"}]

MODALITIES = {
    "CT": ("low_dose_ct", -1000.0, 60.0, 40.0),
    "PET": ("low_count_pet", 0.0, 8.0, 1.0),
    "MRI": ("mri_super_resolution", 0.0, 1500.0, 100.0),
}


def test_order(test_name1, test_name2):
    def get_order(name):
        if "train" in name:
            return 1
        if "infer" in name:
            return 2
        return 3

    return get_order(test_name1) - get_order(test_name2)


class TestTATBundle(unittest.TestCase):
    def setUp(self):
        sys.path = [BUNDLE_ROOT] + sys.path  # the bundle's custom code lives at <bundle_root>/custom
        self.dataset_dir = tempfile.mkdtemp()
        self.work_dir = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        datalist = {"training": [], "validation": [], "test": []}
        shape = (16, 16, 2)
        for modality, (task, bg, fg, noise) in MODALITIES.items():
            os.makedirs(os.path.join(self.dataset_dir, modality))
            for split in datalist:
                label = np.full(shape, bg, np.float32)
                label[4:12, 4:12] = fg
                image = label + rng.normal(0, noise, shape).astype(np.float32)
                item = {"modality": modality, "task": task}
                for kind, arr in (("image", image), ("label", label)):
                    rel = f"{modality}/{split}_{kind}.nii.gz"
                    nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(self.dataset_dir, rel))
                    item[kind] = rel
                datalist[split].append(item)
        with open(os.path.join(self.dataset_dir, "datalist.json"), "w") as f:
            json.dump(datalist, f)

    def tearDown(self):
        sys.path.remove(BUNDLE_ROOT)
        shutil.rmtree(self.dataset_dir)
        shutil.rmtree(self.work_dir)

    def _files(self, bundle_root):
        return {
            "logging_file": os.path.join(bundle_root, "configs/logging.conf"),
            "meta_file": os.path.join(bundle_root, "configs/metadata.json"),
        }

    @parameterized.expand([TEST_CASE_TRAIN])
    def test_train_eval_config(self, override):
        override = dict(override)
        override["dataset_dir"] = self.dataset_dir
        override["ckpt_dir"] = os.path.join(self.work_dir, "models")
        override["output_dir"] = os.path.join(self.work_dir, "eval")
        bundle_root = override["bundle_root"]
        train_file = os.path.join(bundle_root, "configs/train.json")
        eval_file = os.path.join(bundle_root, "configs/evaluate.json")

        trainer = ConfigWorkflow(workflow_type="train", config_file=train_file, **self._files(bundle_root), **override)
        check_workflow(trainer, check_properties=True)
        self.assertEqual(trainer.parser.get_parsed_content("train#trainer").state.iteration, 1)
        best = os.path.join(override["ckpt_dir"], "model.pt")
        self.assertTrue(os.path.isfile(best))
        self.assertTrue(os.path.isfile(os.path.join(override["ckpt_dir"], "latest.pt")))
        trained = os.path.getmtime(best)

        # evaluation: `run` of train.json + evaluate.json (the default run id) evaluates, it does not train
        validator = ConfigWorkflow(config_file=[train_file, eval_file], **self._files(bundle_root), **override)
        check_workflow(validator)
        written = os.listdir(override["output_dir"])
        self.assertTrue(any(f.startswith("test") for f in written), written)
        self.assertEqual(os.path.getmtime(best), trained, "evaluate.json's run trained again")

    @parameterized.expand([TEST_CASE_INFER])
    def test_infer_config(self, override):
        override = dict(override)
        override["dataset_dir"] = os.path.join(self.work_dir, "scans")  # the three degraded CT volumes
        os.makedirs(override["dataset_dir"])
        for split in ("training", "validation", "test"):
            shutil.copy(os.path.join(self.dataset_dir, f"CT/{split}_image.nii.gz"), override["dataset_dir"])
        override["output_dir"] = os.path.join(self.work_dir, "outputs")
        override["ckpt_dir"] = os.path.join(self.work_dir, "models")
        bundle_root = override["bundle_root"]
        parser = ConfigParser()  # weights of the tiny network, as training writes them (a plain state dict)
        parser.read_config(os.path.join(bundle_root, "configs/inference.json"))
        parser.update(pairs={k: v for k, v in override.items() if k.startswith("network_def#")})
        os.makedirs(override["ckpt_dir"], exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), f"{override['ckpt_dir']}/model.pt")

        inferrer = ConfigWorkflow(
            workflow_type="infer",
            config_file=os.path.join(bundle_root, "configs/inference.json"),
            **self._files(bundle_root),
            **override,
        )
        check_workflow(inferrer, check_properties=True)
        outputs = sorted(os.listdir(override["output_dir"]))
        self.assertEqual(len([f for f in outputs if f.endswith(".nii.gz")]), 3, outputs)
        restored = nib.load(os.path.join(override["output_dir"], "test_image.nii.gz"))
        self.assertEqual(restored.shape, (16, 16, 2))


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
