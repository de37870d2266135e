"""The data-list validator and inference accept and refuse exactly the same inputs, with the same message: both read
through the one reading layer. Run on every file of the hostile corpus and on valid inputs a careless reader
corrupts (scaled integers, big-endian, shuffled series, a symlinked series folder)."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

from custom.data import validate_datalist
from custom.inference import LoadScand, find_scans

from tests.reliability.corpus import make_corpus, make_valid_corpus

# problems of a data-list item rather than of a file: the modality (given here so only the file is judged)
MODALITY_CASES = {"unknown_modality", "missing_modality"}


def _inputs(root: str) -> dict:
    """The hostile corpus (every image and label) and the valid corpus under ``root``: name -> (path, modality)."""
    cases = make_corpus(os.path.join(root, "bad"))
    files = {}
    for name, case in cases.items():
        modality = "CT" if name in MODALITY_CASES else case.item.get("modality", "CT")
        files[f"{name}/image"] = (os.path.join(root, "bad", case.item["image"]), modality)
        files[f"{name}/label"] = (os.path.join(root, "bad", case.item["label"]), modality)
    valid = make_valid_corpus(os.path.join(root, "good"))
    files.update({name: (path, "CT") for name, path in valid.items()})
    return {"root": root, "files": files, "valid": set(valid)}


def _validator(path: str, modality: str) -> list[str]:
    try:
        validate_datalist({"training": [{"image": path, "label": path, "modality": modality}]})
    except ValueError as e:
        return [line for line in str(e).splitlines()[1:] if line.startswith(path)]
    return []


def _one(root: str, path: str, modality: str) -> str:
    datalist = os.path.join(root, "one.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump({"test": [{"image": path, "modality": modality}]}, f)
    return datalist


def _inference(path: str, modality: str, root: str) -> str | None:
    (item,) = find_scans(root, os.path.join(root, "out"), datalist=_one(root, path, modality))
    try:
        LoadScand("image")(item)
    except ValueError as e:
        return str(e)
    return None


class TestValidatorInferenceAgreement(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.inputs = _inputs(tmp)

    def test_validator_and_inference_agree_on_every_input(self):
        inputs = self.inputs
        disagree, refused = [], set()
        for name, (path, modality) in sorted(inputs["files"].items()):
            lines = _validator(path, modality)
            message = _inference(path, modality, inputs["root"])
            if message is not None:
                refused.add(name)
            if bool(lines) != (message is not None):
                disagree.append(f"{name}: validator {lines or 'accepts'}, inference {message or 'accepts'}")
            elif message is not None and message not in lines and "file not found" not in message:
                # (a missing file: the validator adds which key of which item; otherwise the messages are identical)
                disagree.append(f"{name}: different messages: validator {lines}, inference {message!r}")
        self.assertFalse(disagree, "\n".join(disagree))
        # every corpus input is refused except the valid partners and the item-level (modality, pairing) problems
        item_level = MODALITY_CASES | {"shape_mismatch"}
        expected = {n for n in inputs["files"] if n.endswith("/image") and n.split("/")[0] not in item_level}
        self.assertEqual(refused, expected | {"four_d/label", "one_d/label"}, sorted(refused ^ expected))

    def test_valid_inputs_accepted_by_both(self):
        for name in self.inputs["valid"]:
            path, modality = self.inputs["files"][name]
            self.assertEqual(_validator(path, modality), [], name)
            self.assertIsNone(_inference(path, modality, self.inputs["root"]), name)

    def test_declared_pet_units_accepted_by_both(self):
        """PET that cannot become SUV: refused by both without a declaration, accepted by both with pet_units='SUV'."""
        root = self.inputs["root"]
        for name in ("pet_counts/image", "pet_no_weight/image"):
            path, _ = self.inputs["files"][name]
            self.assertTrue(_validator(path, "PET"))
            self.assertTrue(_inference(path, "PET", root))
            self.assertTrue(
                validate_datalist({"training": [{"image": path, "label": path, "modality": "PET"}]}, pet_units="SUV")
            )
            (item,) = find_scans(root, os.path.join(root, "out"), datalist=_one(root, path, "PET"))
            out = LoadScand("image", pet_units="SUV")(item)
            self.assertEqual(out["scan_info"]["suv_factors"], [1.0, 1.0, 1.0])

    def test_folder_with_two_series_data_list_item_and_folder_mode(self):
        """One rule, stated in the README: a data-list item names ONE image, so a folder holding two series is
        refused alike by the validator and by inference given that item (same message); inference on a folder
        (folder mode) restores each series separately, and each series is accepted alike by both once it is an
        item of its own."""
        root = self.inputs["root"]
        path, _ = self.inputs["files"]["dicom_mixed_series/image"]
        lines = _validator(path, "CT")
        message = _inference(path, "CT", root)
        self.assertIsNotNone(message)
        self.assertIn("mixed series", message)
        self.assertEqual(set(lines), {message})  # image and label
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "in"))
            os.symlink(path, os.path.join(tmp, "in", "mixed"))  # folder mode on a folder holding that series folder
            folder_items = find_scans(os.path.join(tmp, "in"), os.path.join(tmp, "out"), modality="CT")
            self.assertEqual({i["kind"] for i in folder_items}, {"dicom"})
            self.assertEqual(sorted(len(i["files"]) for i in folder_items), [1, 2])  # one scan per SeriesInstanceUID
            for item in folder_items:
                own = os.path.join(tmp, item["series_uid"])  # the series as an item of its own
                os.makedirs(own)
                for f in item["files"]:
                    os.symlink(f, os.path.join(own, os.path.basename(f)))
                out = LoadScand("image")(dict(item))
                self.assertEqual(_validator(own, "CT"), [])
                self.assertIsNone(_inference(own, "CT", root))
                alone = LoadScand("image")(find_scans(root, os.path.join(tmp, "o2"), datalist=_one(root, own, "CT"))[0])
                self.assertEqual(alone["image"].numpy().tolist(), out["image"].numpy().tolist())


if __name__ == "__main__":
    unittest.main()
