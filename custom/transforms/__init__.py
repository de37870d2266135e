"""Transforms for TAT: per-modality intensity mapping, paired crops, degradation simulators.

The chain of ``bundle/configs/train.json`` (keys: ``image`` = degraded input, ``label`` = clean target,
``modality`` in CT/PET/MRI; ``settings = custom.settings.load_modality_settings("bundle/configs/modality")``)::

    # training (datalist items expanded to one item per slice with custom.data.expand_slices)
    custom.data.LoadSliced(keys=["image", "label"])        # reads one slice (NIfTI or DICOM series)
    EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel")
    ModalityNormalized(keys=["image", "label"], settings=settings)   # clip + map to [0, 1]
    EnsureTyped(keys=["image", "label"], dtype=torch.float32)
    # ---- everything above is deterministic: cached (CacheDataset) ----
    PairedRandCropd(keys=["image", "label"], roi_size=128)  # same window in both
    # batches: DataLoader(ds, batch_sampler=custom.data.TaskUniformBatchSampler(items, samples_per_task=4))

    # validation: the same chain without the crop (whole slices, batch size 1)

    # inference: network output in [0, 1] back to HU / SUV / scanner units, clipped to the training range
    ModalityDenormalized(keys=["pred"], settings=settings, clip=True)

The degradation simulators are functions on one 2D slice in physical units (:func:`simulate_low_dose_ct`,
:func:`simulate_low_count_pet`, :func:`kspace_truncate`); ``python -m custom.tools.demo_data`` uses them to
build paired data from clean scans.
"""

from __future__ import annotations

from custom.transforms.ct_low_dose import simulate_low_dose_ct
from custom.transforms.intensity import ModalityDenormalized, ModalityNormalized
from custom.transforms.mri_resolution import kspace_center_mask, kspace_truncate
from custom.transforms.paired_crop import PairedRandCropd
from custom.transforms.pet_low_count import mlem_reconstruct, simulate_low_count_pet

__all__ = [
    "ModalityNormalized",
    "ModalityDenormalized",
    "PairedRandCropd",
    "simulate_low_dose_ct",
    "simulate_low_count_pet",
    "mlem_reconstruct",
    "kspace_truncate",
    "kspace_center_mask",
]
