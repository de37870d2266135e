"""k-space data consistency: the measured block is kept, the rest is the network's, other modalities untouched."""

from __future__ import annotations

import logging
import unittest

import torch
from custom.settings import as_flag
from custom.transforms import kspace_center_mask, kspace_truncate
from custom.transforms.data_consistency import DC_MODES, DataConsistencyd, kspace_block_error, kspace_data_consistency
from parameterized import parameterized

SHAPES = [[(1, 64, 64)], [(1, 37, 45)], [(1, 21, 20)], [(1, 40, 30, 3)], [(1, 33, 27, 2)]]


def _pair(shape: tuple, factor: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean, truncated input, a 'restored' slice: clean + noise)."""
    g = torch.Generator().manual_seed(seed)
    clean = 200 + 1000 * torch.rand(shape, generator=g)
    if len(shape) == 4:
        low = torch.stack([kspace_truncate(clean[..., i], factor) for i in range(shape[-1])], -1)
    else:
        low = kspace_truncate(clean, factor)
    return clean, low, clean + 30 * torch.randn(shape, generator=g)


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    x = x if x.dim() == 3 else x.movedim(-1, 1)
    return torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))


class TestKSpaceDataConsistency(unittest.TestCase):
    @parameterized.expand(SHAPES)
    def test_block_is_the_inputs(self, shape: tuple) -> None:
        _, low, restored = _pair(shape)
        self.assertGreater(kspace_block_error(restored, low), 3e-3)  # the network changed the measured block
        self.assertLess(kspace_block_error(kspace_data_consistency(restored, low, 4, "real"), low), 1e-6)
        self.assertLess(kspace_block_error(kspace_data_consistency(restored, low, 4, "magnitude"), low), 1e-3)
        noisy = restored + 800 * torch.randn(shape, generator=torch.Generator().manual_seed(1))  # rings below 0
        out = kspace_data_consistency(noisy, low, 4, "nonnegative")
        self.assertLess(kspace_block_error(out, low), 1e-6)
        self.assertGreaterEqual(float(out.min()), 0.0)
        self.assertLess(float(kspace_data_consistency(noisy, low, 4, "real").min()), 0.0)

    def test_nonnegative_iterations_converge(self) -> None:
        _, low, restored = _pair((1, 32, 32))
        noisy = restored + 800 * torch.randn(restored.shape, generator=torch.Generator().manual_seed(1))
        errors = [kspace_block_error(kspace_data_consistency(noisy, low, 4, "nonnegative", n), low) for n in (1, 3, 20)]
        self.assertGreater(errors[0], errors[1])
        self.assertGreater(errors[1], errors[2])

    @parameterized.expand(SHAPES)
    def test_outside_the_block_is_the_networks(self, shape: tuple) -> None:
        _, low, restored = _pair(shape)
        out = kspace_data_consistency(restored, low, 4, "real")
        mask = torch.as_tensor(kspace_center_mask(shape[1:3], 4))
        ko, kr = _spectrum(out), _spectrum(restored)
        outside = ~(mask | mask.flip(0).roll(1 - shape[1] % 2, 0).flip(1).roll(1 - shape[2] % 2, 1))
        torch.testing.assert_close(ko[..., outside], kr[..., outside], rtol=1e-6, atol=1e-6 * kr.abs().max())

    @parameterized.expand(SHAPES)
    def test_input_is_a_fixed_point(self, shape: tuple) -> None:
        _, low, _ = _pair(shape)
        for mode in ("nonnegative", "magnitude", "real"):
            torch.testing.assert_close(kspace_data_consistency(low, low, 4, mode), low, rtol=1e-5, atol=1e-3)

    def test_zero_background_is_a_fixed_point(self) -> None:
        """An MR magnitude image with exact zeros (background) comes back unchanged: values are clamped at 0 only."""
        g = torch.Generator().manual_seed(2)
        measured = (torch.randn((1, 16, 16), generator=g) * 0.5).clamp_min(0)  # half the pixels are 0, many in (0, 1)
        self.assertGreater(int((measured == 0).sum()), 50)
        for mode in ("nonnegative", "magnitude", "real"):
            torch.testing.assert_close(
                kspace_data_consistency(measured, measured, 4, mode), measured, atol=1e-6, rtol=0
            )

    def test_factor_sets_the_block(self) -> None:
        _, low2, restored = _pair((1, 48, 48), factor=2)
        self.assertLess(kspace_block_error(kspace_data_consistency(restored, low2, 2, "real"), low2, 2), 1e-6)
        self.assertGreater(kspace_block_error(kspace_data_consistency(restored, low2, 4, "real"), low2, 2), 1e-3)

    def test_factor_one_measured_everything(self) -> None:
        """kspace_factor 1 (all of k-space measured) is accepted and gives the input back; 1.5 is a valid factor."""
        _, low, restored = _pair((1, 12, 10))
        torch.testing.assert_close(kspace_data_consistency(restored, low, 1, "real"), low, rtol=1e-6, atol=1e-3)
        self.assertEqual(kspace_block_error(low, low, 1), 0.0)
        self.assertGreater(kspace_block_error(restored, low, 1), 1e-3)
        out = kspace_data_consistency(restored, low, 1.5, "real")
        self.assertLess(kspace_block_error(out, low, 1.5), 1e-6)
        self.assertGreater(kspace_block_error(out, low, 1), 1e-3)  # only the central 2/3 per axis is the input's

    def test_defaults_are_the_published_task(self) -> None:
        """Defaults: the x4 task's block, 'nonnegative' with DC_ITERATIONS (20) projections, as documented."""
        _, low, restored = _pair((1, 24, 24))
        noisy = restored + 800 * torch.randn(restored.shape, generator=torch.Generator().manual_seed(1))
        default = kspace_data_consistency(noisy, low)
        torch.testing.assert_close(default, kspace_data_consistency(noisy, low, 4, "nonnegative", 20), rtol=0, atol=0)
        self.assertFalse(torch.equal(default, kspace_data_consistency(noisy, low, 4, "nonnegative", 19)))
        self.assertFalse(torch.equal(default, kspace_data_consistency(noisy, low, 4, "nonnegative", 21)))
        self.assertEqual(kspace_block_error(noisy, low), kspace_block_error(noisy, low, 4))

    @parameterized.expand([[(1, 16, 16)], [(1, 15, 18)], [(1, 16, 12, 2)]])
    def test_block_error_is_over_the_simulator_mask(self, shape: tuple) -> None:
        """The error is ||K_image - K_measured|| / ||K_measured|| over exactly the simulator's mask, every slice."""
        _, low, restored = _pair(shape)
        mask = torch.as_tensor(kspace_center_mask(shape[1:3], 4))
        ka, kb = _spectrum(restored)[..., mask], _spectrum(low)[..., mask]
        expected = float(torch.linalg.vector_norm(ka - kb) / torch.linalg.vector_norm(kb))
        self.assertAlmostEqual(kspace_block_error(restored, low), expected, delta=1e-9 * expected)
        self.assertAlmostEqual(kspace_block_error(restored.numpy(), low.numpy()), expected, delta=1e-9 * expected)

    def test_block_error_of_an_empty_measurement(self) -> None:
        """Both blocks zero: 0; a zero measured block with a non-zero image: a huge error, never 0."""
        zeros = torch.zeros(1, 8, 8)
        self.assertEqual(kspace_block_error(zeros, zeros), 0.0)
        self.assertGreater(kspace_block_error(torch.ones(1, 8, 8), zeros), 1e6)

    def test_inputs_not_modified_and_shape_kept(self) -> None:
        _, low, restored = _pair((1, 24, 20, 2))
        a, b = low.clone(), restored.clone()
        out = kspace_data_consistency(restored, low)
        self.assertEqual(out.shape, restored.shape)
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(low, a, rtol=0, atol=0)
        torch.testing.assert_close(restored, b, rtol=0, atol=0)

    def test_bad_arguments(self) -> None:
        x = torch.rand(1, 8, 8)
        with self.assertRaisesRegex(ValueError, "shape"):
            kspace_data_consistency(x, torch.rand(1, 8, 9))
        with self.assertRaisesRegex(ValueError, "mode"):
            kspace_data_consistency(x, x, mode="phase")
        with self.assertRaisesRegex(ValueError, "kspace_factor must be >= 1, got 0.5"):
            kspace_data_consistency(x, x, factor=0.5)
        with self.assertRaisesRegex(ValueError, "kspace_factor must be >= 1, got 0.5"):
            kspace_block_error(x, x, factor=0.5)
        with self.assertRaisesRegex(ValueError, "iterations"):
            kspace_data_consistency(x, x, iterations=0)
        with self.assertRaisesRegex(ValueError, "slice"):
            kspace_data_consistency(torch.rand(8, 8), torch.rand(8, 8))


class TestDataConsistencyd(unittest.TestCase):
    def test_mri_replaced(self) -> None:
        _, low, restored = _pair((1, 32, 28, 2))
        d = {"pred": restored, "input": low, "modality": "MRI", "source": "a.nii"}
        with self.assertLogs("custom.transforms.data_consistency", logging.INFO) as logs:
            out = DataConsistencyd("pred", factor=4)(d)
        self.assertLess(kspace_block_error(out["pred"], low), 1e-3)
        torch.testing.assert_close(d["pred"], restored)  # the item is not modified
        self.assertIn("8x7", "".join(logs.output))
        self.assertNotIn("warnings", out)

    @parameterized.expand([["CT"], ["PET"]])
    def test_other_modalities_untouched_and_logged(self, modality: str) -> None:
        _, low, restored = _pair((1, 32, 32))
        with self.assertLogs("custom.transforms.data_consistency", logging.INFO) as logs:
            out = DataConsistencyd("pred")({"pred": restored, "input": low, "modality": modality, "source": "b.nii"})
        self.assertIs(out["pred"], restored)
        self.assertIn(f"b.nii is {modality}, not MRI: left unchanged", "".join(logs.output))

    def test_dicom_mr_and_disabled(self) -> None:
        _, low, restored = _pair((1, 32, 32))
        out = DataConsistencyd("pred")({"pred": restored, "input": low, "modality": "MR"})
        self.assertLess(kspace_block_error(out["pred"], low), 1e-3)
        off = DataConsistencyd("pred", enabled="false")({"pred": restored, "input": low, "modality": "MRI"})
        self.assertIs(off["pred"], restored)

    def test_size_not_divisible_warns_and_uses_simulator_rounding(self) -> None:
        _, low, restored = _pair((1, 30, 32))
        with self.assertLogs("custom.transforms.data_consistency", logging.WARNING) as logs:
            out = DataConsistencyd("pred")({"pred": restored, "input": low, "modality": "MRI", "source": "c.nii"})
        self.assertIn("30x32 is not divisible by kspace_factor 4", "".join(logs.output))
        self.assertIn("central 8x8", out["warnings"][0])  # round(30 / 4) = 8, as the simulator
        self.assertLess(kspace_block_error(out["pred"], low), 1e-3)

    def test_missing_reference_and_bad_options(self) -> None:
        with self.assertRaisesRegex(ValueError, "d.nii: data consistency needs the input scan"):
            DataConsistencyd("pred")({"pred": torch.rand(1, 8, 8), "modality": "MRI", "source": "d.nii"})
        with self.assertRaisesRegex(ValueError, "mode"):
            DataConsistencyd("pred", mode="imag")
        with self.assertRaisesRegex(ValueError, "kspace_factor"):
            DataConsistencyd("pred", factor=0)
        _, low, restored = _pair((1, 12, 12))
        out = DataConsistencyd("pred", factor=1, mode="real")({"pred": restored, "input": low, "modality": "MRI"})
        torch.testing.assert_close(out["pred"], low, rtol=1e-6, atol=1e-3)  # factor 1: all of k-space measured
        noisy = restored + 800 * torch.randn(restored.shape, generator=torch.Generator().manual_seed(1))
        for mode in DC_MODES:
            out = DataConsistencyd("pred", mode=mode)({"pred": noisy, "input": low, "modality": "MRI"})
            torch.testing.assert_close(out["pred"], kspace_data_consistency(noisy, low, 4, mode), rtol=0, atol=0)
        with self.assertRaisesRegex(ValueError, "data_consistency must be true or false"):
            DataConsistencyd("pred", enabled="maybe")

    @parameterized.expand([[True, True], ["true", True], ["False", False], [0, False], ["1", True], ["no", False]])
    def test_as_flag(self, value: object, expected: bool) -> None:
        self.assertIs(as_flag(value), expected)


if __name__ == "__main__":
    unittest.main()
