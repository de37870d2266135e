"""MONAI Deploy App SDK application: DICOM series in, TAT-restored derived DICOM series out, in physical units.

Pipeline (holoscan operators, MONAI Deploy App SDK 4.0):
    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> TATRestoreOperator -> DerivedSeriesWriterOperator

Why not the SDK's MonaiBundleInferenceOperator: it casts "image"-type outputs to uint8, which destroys a
restored CT/PET/MR scan (measured: HU -> 0..255). TATRestoreOperator keeps float32 physical units (HU, SUV, MR
units) end to end and the writer stores them with the source series' rescale slope/intercept
(custom.inference.writers.write_dicom_series), so the derived series reads back in the same units.

Model (-m): a bundle folder (configs/inference.json + models/model.pt, the EMA state dict train.json saves) or a
model.pt file inside such a bundle. TorchScript is not used: torch.jit.script fails on the network and a trace
bakes in the batch size (measured), so the network is rebuilt from the bundle's network_def and the state dict by
custom.inference.restore.Restorer, the same restore() (normalise, infer, denormalise, clip) as the bundle's
inference and the MONAI Label app.
Config overrides (e.g. a smaller network in tests): env TAT_DEPLOY_OVERRIDE='{"network_def#dim": 8, ...}'.
PET units: PET that cannot be converted to SUV from its tags (Units CNTS, no PatientWeight, ...) is refused naming
the tags, as in the bundle's inference; if its values are SUV already, declare it with env TAT_DEPLOY_PET_UNITS=SUV
(the bundle's "pet_units"; TATRestoreOperator(pet_units="SUV") when composing the app in Python).

Run locally:
    python apps/deploy/app.py -i <dicom folder> -o <output folder> -m bundle
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

SELECTION_RULES = json.dumps({"selections": [{"name": "restorable", "conditions": {"Modality": "(?i)(CT|PT|MR)"}}]})


def _bundle_paths(model_path: Path) -> tuple[Path, Path]:
    """(bundle root, checkpoint) from a bundle folder, its models/ folder, or its model.pt."""
    model_path = Path(model_path).resolve()
    if model_path.is_file():
        ckpt = model_path
        root = model_path.parent.parent if model_path.parent.name == "models" else model_path.parent
    else:
        root = model_path.parent if model_path.name == "models" else model_path
        ckpt = root / "models" / "model.pt"
    if not (root / "configs" / "inference.json").is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"{model_path}: need a bundle with configs/inference.json and models/model.pt")
    return root, ckpt


class TATRestoreOperator(Operator):
    """Restores every selected series slice by slice; emits a list of dicts for the writer (float32, physical units)."""

    def __init__(self, fragment: Fragment, *args, model_path: Path, pet_units: str | None = None, **kwargs):
        self.bundle_root, self.ckpt = _bundle_paths(model_path)
        self.pet_units = pet_units or os.environ.get("TAT_DEPLOY_PET_UNITS") or None  # None: SUV from the tags
        self._restorer = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study_selected_series_list")
        spec.output("restored").condition(ConditionType.NONE)

    def _load(self):
        from custom.inference.restore import Restorer

        overrides = json.loads(os.environ.get("TAT_DEPLOY_OVERRIDE", "{}"))
        self._restorer = Restorer.from_bundle(self.bundle_root, checkpoint=self.ckpt, overrides=overrides)

    def compute(self, op_input, op_output, context):
        from custom.inference.io import load_dicom_series
        from custom.settings import MODALITY_ALIASES

        if self._restorer is None:
            self._load()
        selections = op_input.receive("study_selected_series_list") or []
        results = []
        for study_selected in selections:
            for selected in study_selected.selected_series:
                series = selected.series
                files = [sop.get_native_sop_instance().filename for sop in series.get_sop_instances()]
                where = f"series {series.SeriesInstanceUID}"
                values, meta = load_dicom_series(files, where=where, pet_units=self.pet_units)
                if meta["modality"] is None:
                    tag, known = meta["dicom_modality"], ", ".join(sorted(MODALITY_ALIASES))
                    found = f"is {tag}, which is not one of" if tag else "is missing; expected one of"
                    raise ValueError(f"{where}: Modality tag (0008,0060) {found} {known}.")
                restored = self._restorer(values, meta["modality"])
                logging.info(
                    f"restored {series.SeriesInstanceUID} ({meta['modality']}, {values.shape}): "
                    f"input [{values.min():.1f}, {values.max():.1f}] -> [{restored.min():.1f}, {restored.max():.1f}]"
                )
                results.append({"values": restored, "uid": series.SeriesInstanceUID, **meta})
        op_output.emit(results, "restored")


class DerivedSeriesWriterOperator(Operator):
    """Writes each restored volume as a derived DICOM series (new Series/SOP UIDs, ImageType DERIVED) under
    <output>/<source SeriesInstanceUID>/, stored with the source's rescale so values stay in physical units."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("restored")

    def compute(self, op_input, op_output, context):
        from custom.inference.writers import write_dicom_series

        self.output_folder.mkdir(parents=True, exist_ok=True)
        for item in op_input.receive("restored") or []:
            path = write_dicom_series(
                item["values"],
                item["datasets"],
                item["files"],
                str(self.output_folder / item["uid"]),
                suv_factors=item["suv_factors"],
                overwrite=True,
            )
            logging.info(f"wrote derived series {path}")


class TATRestorationApp(Application):
    """Restores CT / PET / MR DICOM series with the TAT bundle."""

    name = "tat_restoration"
    description = "TAT all-in-one restoration of DICOM series (low-dose CT, low-count PET, MRI x4 SR)"
    version = "0.1.0"

    def compose(self):
        ctx: AppContext = Application.init_app_context(self.argv)
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(ctx.input_path), name="dicom_loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=SELECTION_RULES, all_matched=True, name="series_selector")
        restore = TATRestoreOperator(self, model_path=Path(ctx.model_path), name="tat_restore")
        writer = DerivedSeriesWriterOperator(self, output_folder=Path(ctx.output_path), name="derived_writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, restore, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(restore, writer, {("restored", "restored")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    TATRestorationApp().run()
