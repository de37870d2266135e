"""MONAI Deploy App SDK application: DICOM series in, TAT-restored derived DICOM series out, in physical units.

Pipeline (holoscan operators, MONAI Deploy App SDK 4.0):
    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> TATRestoreOperator -> DerivedSeriesWriterOperator

Why not the SDK's MonaiBundleInferenceOperator: it casts "image"-type outputs to uint8, which destroys a
restored CT/PET/MR scan (HU -> 0..255). TATRestoreOperator keeps float32 physical units (HU, SUV, MR
units) end to end and the writer stores them with the source series' rescale slope/intercept
(custom.inference.writers.write_dicom_series), so the derived series reads back in the same units.

Model (-m): a bundle folder (configs/inference.json + models/model.pt, the EMA state dict train.json saves) or a
model.pt file inside such a bundle. TorchScript is not used: the network cannot be scripted and a trace freezes
the slice size (custom/export.py), so the network is rebuilt from the bundle's network_def and the state dict by
custom.inference.restore.Restorer, the same restore() (normalise, infer, denormalise, clip) as the bundle's
inference and the MONAI Label app.
Config overrides (e.g. a smaller network in tests): env TAT_DEPLOY_OVERRIDE='{"network_def#dim": 8, ...}'.
PET units: PET that cannot be converted to SUV from its tags (Units CNTS, no PatientWeight, ...) is refused naming
the tags, as in the bundle's inference; if its values are SUV already, declare it with env TAT_DEPLOY_PET_UNITS=SUV
(the bundle's "pet_units"; TATRestoreOperator(pet_units="SUV") when composing the app in Python).
"Is it real?" options (README.md), the bundle's inference.json keys, set with env variables (unset: inference.json's
values): TAT_DEPLOY_DATA_CONSISTENCY (data_consistency, MRI only), TAT_DEPLOY_KSPACE_FACTOR (kspace_factor),
TAT_DEPLOY_DATA_CONSISTENCY_MODE (data_consistency_mode), TAT_DEPLOY_TASK_CHECK (task_check: predicted task and
warnings, logged and written into the derived series' ImageComments), TAT_DEPLOY_DIFFERENCE (difference_output: the
difference restored - input as its own derived series <output>/<SeriesInstanceUID>_difference); or
TATRestoreOperator(options={"data_consistency": True, ...}). Both operators run the config's own postprocessing
steps through Restorer (restore_item, write_item), as the bundle's inference does.

Run locally:
    python apps/deploy/app.py -i <dicom folder> -o <output folder> -m bundle
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

# anchored: the SDK matches a text condition with re.search, so "(CT|PT|MR)" also took RTSTRUCT, OCT, OPT series
SELECTION_RULES = json.dumps({"selections": [{"name": "restorable", "conditions": {"Modality": "(?i)^(CT|PT|MR)$"}}]})
# env variable -> inference.json option (custom.inference.restore.Restorer.OPTIONS)
OPTION_ENV = {
    "TAT_DEPLOY_DATA_CONSISTENCY": "data_consistency",
    "TAT_DEPLOY_KSPACE_FACTOR": "kspace_factor",
    "TAT_DEPLOY_DATA_CONSISTENCY_MODE": "data_consistency_mode",
    "TAT_DEPLOY_TASK_CHECK": "task_check",
    "TAT_DEPLOY_DIFFERENCE": "difference_output",
}


def env_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The inference options set in the environment (:data:`OPTION_ENV`); unset or empty ones are left out, so
    inference.json's values apply.

    Raises:
        ValueError: a value ``Restorer.check_options`` refuses (not a switch, a factor < 1, an unknown mode); names
            the variable.
    """
    from custom.inference.restore import Restorer

    environ = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    for var, key in OPTION_ENV.items():
        value = (environ.get(var) or "").strip()
        if not value:
            continue
        try:
            options.update(Restorer.check_options({key: value}))
        except ValueError as e:
            raise ValueError(f"{var}: {e}") from None
    return options


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
    """Restores every selected series slice by slice and runs the config's steps before its writers (data
    consistency, task check); emits a list of items (``values`` float32 physical units, ``uid``, the reader's
    info, ``predicted_task``, ``task_distance``, ``warnings``) for :class:`DerivedSeriesWriterOperator`."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        model_path: Path,
        pet_units: str | None = None,
        options: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        self.bundle_root, self.ckpt = _bundle_paths(model_path)
        self.pet_units = pet_units or os.environ.get("TAT_DEPLOY_PET_UNITS") or None  # None: SUV from the tags
        self.tat_options = {**env_options(), **(options or {})}  # argument over env over inference.json
        self._restorer = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study_selected_series_list")
        spec.output("restored").condition(ConditionType.NONE)

    @property
    def restorer(self):
        """The bundle's :class:`custom.inference.restore.Restorer` (built at first use)."""
        if self._restorer is None:
            from custom.inference.restore import Restorer

            # the app writes into its own output folder, replacing what a previous run left there
            overrides = {**json.loads(os.environ.get("TAT_DEPLOY_OVERRIDE", "{}")), "overwrite": True}
            self._restorer = Restorer.from_bundle(self.bundle_root, checkpoint=self.ckpt, overrides=overrides)
            self._restorer.steps(self.tat_options)  # refuses a bad option before any series is read
        return self._restorer

    def write(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The config's writers (difference series when enabled, restored series) for one emitted item."""
        return self.restorer.write_item(item, self.tat_options)

    def compute(self, op_input, op_output, context):
        import torch
        from custom.inference.io import load_dicom_series
        from custom.settings import MODALITY_ALIASES

        restorer = self.restorer
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
                item = {
                    "image": torch.from_numpy(values)[None],
                    "modality": meta["modality"],
                    "source": os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in meta["files"]]),
                    "kind": "dicom",
                    "scan_info": meta,
                }
                d = restorer.restore_item(item, self.tat_options)
                restored = d["pred"][0].numpy()
                logging.info(
                    f"restored {series.SeriesInstanceUID} ({meta['modality']}, {values.shape}): "
                    f"input [{values.min():.1f}, {values.max():.1f}] -> [{restored.min():.1f}, {restored.max():.1f}]"
                )
                if "predicted_task" in d:
                    logging.info(
                        f"task check {series.SeriesInstanceUID}: predicted {d['predicted_task']} "
                        f"(distance {d['task_distance']}), {len(d['warnings'])} warning(s)"
                    )
                for w in d["warnings"]:  # also written into the derived series' ImageComments
                    logging.warning(f"{series.SeriesInstanceUID}: {w}")
                results.append({**d, **meta, "values": restored, "uid": series.SeriesInstanceUID})
        op_output.emit(results, "restored")


class DerivedSeriesWriterOperator(Operator):
    """Writes each restored volume as a derived DICOM series (new Series/SOP UIDs, ImageType DERIVED, the scan's
    warnings in ImageComments) under <output>/<source SeriesInstanceUID>/, stored with the source's rescale so values
    stay in physical units, and, when the difference option is on, the difference restored - input as its own
    derived series <output>/<source SeriesInstanceUID>_difference/: the config's writers, through the restore
    operator's Restorer."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, restore_operator: TATRestoreOperator, **kwargs):
        self.output_folder = Path(output_folder)
        self.restore_operator = restore_operator
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("restored")

    def compute(self, op_input, op_output, context):
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for item in op_input.receive("restored") or []:
            d = self.restore_operator.write({**item, "output": str(self.output_folder / item["uid"])})
            logging.info(f"wrote derived series {d['output']}")
            if d.get("difference_output"):
                logging.info(f"wrote difference series (restored - input) {d['difference_output']}")


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
        writer = DerivedSeriesWriterOperator(
            self, output_folder=Path(ctx.output_path), restore_operator=restore, name="derived_writer"
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, restore, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(restore, writer, {("restored", "restored")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    TATRestorationApp().run()
