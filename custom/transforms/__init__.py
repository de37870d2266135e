"""Transforms for TAT: per-modality intensity mapping, paired crops, degradation simulators.

Recommended chains (keys: ``image`` = degraded input, ``label`` = clean target, ``modality`` in CT/PET/MRI;
``settings = custom.data.load_modality_settings("bundle/configs/modality")``)::

    # training (datalist items expanded to slices with custom.data.expand_slices for 3D volumes)
    LoadImaged(keys=["image", "label"], reader=None)       # NIfTI; DICOM: reader=custom.data.DicomReader
    EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel")
    custom.data.ModalityFromMetad(keys=["label"])          # only if the data list has no "modality"
    custom.data.SelectSliced(keys=["image", "label"])      # 3D -> 2D axial slice at item["slice_index"]
    ModalityNormalized(keys=["image", "label"], settings=settings)   # clip + map to [0, 1]
    # ---- everything above is deterministic: cache it (PersistentDataset / CacheDataset) ----
    PairedRandCropd(keys=["image", "label"], roi_size=128)  # same window in both
    # optional (not in the published recipe): RandFlipd / RandRotate90d with keys=["image", "label"]
    #   (MONAI dict transforms draw once per call, so both keys get the same flip/rotation)
    EnsureTyped(keys=["image", "label"])
    # batches: DataLoader(ds, batch_sampler=custom.data.TaskUniformBatchSampler(items, samples_per_task=4))

    # validation / test: the same chain without the crop (whole slices, batch size 1)

    # alternative to LoadImaged + EnsureChannelFirstd + SelectSliced for big volumes:
    #   custom.data.LoadSliced(keys=["image", "label"]) + EnsureChannelFirstd(..., channel_dim="no_channel")
    #   (reads one slice from disk instead of the whole volume)

    # clean-only data (items without "image"): load and slice "label" only (allow_missing_keys=True), then
    # simulate the degraded input before normalisation (physical units), one simulator per modality:
    #   ModalityDispatchd({"CT": SimulateLowDoseCTd(i0=5e5),                     # clean_key="label",
    #                      "PET": SimulateLowCountPETd(dose_fraction=1 / 12),    # output_key="image"
    #                      "MRI": KSpaceTruncated(factor=4)})                    # (BicubicDegraded alternative)
    # the simulators draw their noise from a per-item seed (seed, file name, slice index): they are
    # deterministic, so CacheDataset/PersistentDataset store the simulated pairs and no epoch re-simulates.
    # (use one chain per modality, or the prebuilt pairs of python -m custom.data.demo_data)

    # inference / metrics: network output in [0, 1]
    ModalityDenormalized(keys=["pred", "label"], settings=settings)  # back to HU / SUV / scanner units
    ModalityEvalWindowd(keys=["pred", "label"], settings=settings)   # published evaluation window
"""

from __future__ import annotations

from custom.transforms.ct_low_dose import SimulateLowDoseCTd, simulate_low_dose_ct
from custom.transforms.dispatch import ModalityDispatchd
from custom.transforms.intensity import ModalityDenormalized, ModalityEvalWindowd, ModalityNormalized
from custom.transforms.mri_resolution import (
    BicubicDegraded,
    KSpaceTruncated,
    bicubic_degrade,
    kspace_center_mask,
    kspace_truncate,
)
from custom.transforms.paired_crop import PairedRandCropd
from custom.transforms.pet_low_count import SimulateLowCountPETd, mlem_reconstruct, simulate_low_count_pet
from custom.transforms.seeding import item_random_state

__all__ = [
    "ModalityNormalized",
    "ModalityDenormalized",
    "ModalityEvalWindowd",
    "PairedRandCropd",
    "ModalityDispatchd",
    "SimulateLowDoseCTd",
    "simulate_low_dose_ct",
    "SimulateLowCountPETd",
    "simulate_low_count_pet",
    "mlem_reconstruct",
    "KSpaceTruncated",
    "BicubicDegraded",
    "kspace_truncate",
    "kspace_center_mask",
    "bicubic_degrade",
    "item_random_state",
]
