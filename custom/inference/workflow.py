"""The inference engine: restore every scan, keep going past failures, report every input at the end.

Every item :func:`custom.inference.find_scans` returns ends up in ``inference_report.json`` as ``written``,
``skipped`` (output exists, or the scanner's ``skip`` reason) or ``failed`` (with the error naming the file).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from custom.data.datalist import item_name
from custom.inference.inferer import warn_if_emulated
from custom.inference.restore import restore
from custom.io import write_json_atomic
from custom.settings import as_flag
from monai.engines import SupervisedEvaluator
from monai.transforms import Transform

__all__ = ["CatchFailures", "first_item", "RestorationEvaluator"]

logger = logging.getLogger(__name__)


def _root_message(e: BaseException) -> str:
    """The message of an exception without MONAI's wrappers (``Compose`` re-raises transform errors as
    ``RuntimeError("applying transform ...")``): the first exception of the cause chain that is not a wrapper."""
    while e.__cause__ is not None and isinstance(e, RuntimeError) and "applying transform" in str(e):
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


class CatchFailures(Transform):
    """Apply ``transform``; on an exception return the item with an ``error`` message instead of raising.

    Lets the data loader hand a broken scan to :class:`RestorationEvaluator`, which reports it and moves on.
    Items the scanner marked with ``skip`` (a reason) or ``error`` are passed through unread.

    Args:
        transform: the preprocessing chain.
    """

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if data.get("skip") or data.get("error"):
            return dict(data)
        start = time.perf_counter()
        try:
            return {**dict(self.transform(data)), "read_seconds": time.perf_counter() - start}
        except Exception as e:  # every failure is reported per scan
            return {
                **{k: v for k, v in dict(data).items() if isinstance(v, (str, int, float, list))},
                "error": _root_message(e),
            }


def first_item(batch: Sequence[Any]) -> Any:
    """``collate_fn`` for batch size 1 over whole scans of different sizes: the item itself."""
    if len(batch) != 1:
        raise ValueError(f"inference loads one scan at a time (batch_size 1), got {len(batch)}.")
    return batch[0]


class RestorationEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that restores one whole scan per iteration and never stops on a bad scan.

    Each iteration: record the scanner's ``skip`` / ``error`` items, skip the scan when its output exists and
    ``overwrite`` is False (logged), restore it with :func:`custom.inference.restore.restore` (normalise with
    ``settings``, ``inferer(x, network)``, denormalise, clip when ``clip_output``; ``pred`` in physical units,
    ``image`` replaced by the normalised input, the physical input kept in ``input`` when absent), then apply
    ``postprocessing`` (e.g. write) to the item. Without ``settings`` the image is taken as already normalised
    and ``pred`` is the raw network output. Report entries carry ``read_seconds`` (preprocessing),
    ``restore_seconds`` and ``write_seconds`` (postprocessing); ``seconds`` is restore + write. Any error of one
    scan (reading, inference, writing) is logged with its file name and the next scan runs. After the run the
    per-scan status of every item is written to ``report_path`` (json; also when the run itself stops on an
    error, the scans not reached listed as failed) and, if any scan failed, a ``RuntimeError`` listing them is
    raised (non-zero exit of ``monai.bundle run``).

    Args:
        device: device of the network.
        val_data_loader: loader of items from :class:`custom.inference.LoadScand` (``collate_fn=first_item``).
        network: the restoration network.
        inferer: e.g. :class:`custom.inference.SliceBatchInferer`.
        postprocessing: transform applied to the item dict with ``pred`` added (``(1, H, W[, D])`` on CPU).
        settings: modality settings (:func:`custom.settings.load_modality_settings`); None: input already normalised.
        clip_output: clip restored values to the modality's ``clip_range``.
        overwrite: replace existing outputs.
        report_path: json file of per-scan results (None: not written).
        val_handlers: handlers (e.g. ``CheckpointLoader``).
        amp: autocast the forward pass.
        kwargs: other ``SupervisedEvaluator`` arguments.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: Any,
        postprocessing: Callable[[Any], Any] | None = None,
        overwrite: bool = False,
        report_path: str | None = None,
        val_handlers: Sequence[Any] | None = None,
        amp: bool = False,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        clip_output: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            inferer=inferer,
            postprocessing=None,
            val_handlers=val_handlers,
            amp=as_flag(amp, "amp"),  # switches from a command line arrive as text: "--amp false" is 'false'
            decollate=False,
            **kwargs,
        )
        self.restore_postprocessing = postprocessing
        self.overwrite = as_flag(overwrite, "overwrite")
        self.report_path = report_path
        self.settings = settings
        self.clip_output = as_flag(clip_output, "clip_output")
        self.results: list[dict[str, Any]] = []

    def _record(
        self,
        item: Mapping[Hashable, Any],
        status: str,
        message: str = "",
        seconds: float = 0.0,
        timings: Mapping[str, float] | None = None,
    ) -> None:
        source = item_name(item)
        if status == "failed" and source not in message:
            message = f"{source}: {message}"
        entry = {
            "image": source,
            "output": str(item.get("output", "")),
            "status": status,
            "message": message,
            "seconds": round(seconds, 3),
            **{k: round(float(v), 3) for k, v in (timings or {}).items()},
        }
        # task check (custom.inference.task_check), data-consistency notes and the difference output, when present
        extra = ("predicted_task", "task_distance", "warnings", "difference_output")
        entry.update({k: item[k] for k in extra if k in item})
        self.results.append(entry)
        log = logger.error if status == "failed" else logger.warning if status == "skipped" else logger.info
        log("%s %s -> %s %s", status, entry["image"], entry["output"], message)

    def _iteration(self, engine: Any, batchdata: dict[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        start = time.perf_counter()
        item = dict(batchdata)
        if item.get("skip"):
            self._record(item, "skipped", str(item["skip"]))
            return {}
        if item.get("error"):
            self._record(item, "failed", str(item["error"]))
            return {}
        if not item.get("output"):
            self._record(item, "failed", "no output path for this item")
            return {}
        if os.path.lexists(str(item["output"])) and not self.overwrite:
            self._record(item, "skipped", "output exists (set overwrite=true to replace it)")
            return {}
        timings = {"read_seconds": float(item.get("read_seconds", 0.0))}
        try:
            image = item["image"]
            if self.settings is not None:
                item.setdefault("input", image)
                item["pred"], item["image"] = restore(
                    image,
                    item.get("modality"),
                    engine.network,
                    engine.inferer,
                    self.settings,
                    clip=self.clip_output,
                    device=engine.state.device,
                    amp=self.amp,
                    return_normalised=True,
                )
            else:
                x = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)[None]
                engine.network.eval()
                if self.amp and torch.device(engine.state.device).type == "cpu":
                    warn_if_emulated("bfloat16")  # CPU autocast's default dtype
                with (
                    torch.no_grad(),
                    torch.autocast(device_type=torch.device(engine.state.device).type, enabled=self.amp),
                ):
                    pred = engine.inferer(x.to(engine.state.device), engine.network)
                item["pred"] = pred[0].float().cpu()
            timings["restore_seconds"] = time.perf_counter() - start
            if self.restore_postprocessing is not None:
                item = dict(self.restore_postprocessing(item))
            timings["write_seconds"] = time.perf_counter() - start - timings["restore_seconds"]
        except Exception as e:  # report and continue with the next scan
            logger.debug(traceback.format_exc())
            self._record(item, "failed", _root_message(e), time.perf_counter() - start, timings)
            return {}
        self._record(item, "written", "", time.perf_counter() - start, timings)
        return {"pred": item["pred"]}

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Restore all scans, write the report, raise if any scan failed.

        Raises:
            RuntimeError: one or more scans failed (all are listed).
        """
        self.results = []
        try:
            super().run(global_epoch)
        except Exception as e:  # e.g. the checkpoint does not load: every scan not reached is reported failed
            self._record_unreached(f"inference stopped before this scan: {_root_message(e)}")
            self._write_report()
            raise
        self._record_unreached("not processed by the engine")
        self._write_report()
        failed = [r for r in self.results if r["status"] == "failed"]
        if failed:
            lines = "\n".join(f"  {r['image']}: {r['message']}" for r in failed)
            raise RuntimeError(f"{len(failed)} of {len(self.results)} scan(s) failed:\n{lines}")

    def _record_unreached(self, message: str) -> None:
        """Record the data loader's items that have no entry yet (none is ever left out): the scanner's ``skip``
        items as skipped, the others as failed with their ``error`` or ``message``."""
        items = getattr(getattr(self.data_loader, "dataset", None), "data", None)
        if not isinstance(items, (list, tuple)):
            return
        seen = {(r["image"], r["output"]) for r in self.results}
        for item in items:
            if not isinstance(item, Mapping):
                continue
            source = item_name(item)
            if (source, str(item.get("output", ""))) in seen:
                continue
            if item.get("skip"):
                self._record(item, "skipped", str(item["skip"]))
            else:
                self._record(item, "failed", str(item.get("error") or message))

    def _write_report(self) -> dict[str, int]:
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("written", "skipped", "failed")}
        logger.info(
            "inference: %d written, %d skipped, %d failed", counts["written"], counts["skipped"], counts["failed"]
        )
        if self.report_path:
            write_json_atomic(self.report_path, {"counts": counts, "scans": self.results})
        return counts
