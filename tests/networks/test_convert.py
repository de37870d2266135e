from __future__ import annotations

import os
import pickle
import tempfile
import unittest

import torch
from custom.networks import TAT, convert_reference_state_dict, load_reference_checkpoint

from tests.networks.golden import reference_shapes


def zeros_state() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(v) for k, v in reference_shapes().items()}


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class TestConvert(unittest.TestCase):
    def test_every_reference_key_maps(self):
        ref = zeros_state()
        self.assertEqual(len(ref), 575)
        out = convert_reference_state_dict(ref)
        self.assertEqual(len(out), 575)
        with torch.device("meta"):
            model = TAT()
        self.assertEqual(set(out), set(model.state_dict()))
        self.assertEqual(tuple(out["latent.0.attn.qkv_dwconv.weight"].shape), (1152, 1, 3, 3))
        self.assertEqual(tuple(out["latent.0.ffn.dwconv.gate"].shape), (2042,))
        self.assertIn("task_kernels.heads.level3.ffn.weight", out)

    def test_values_move_element_by_element(self):
        """Each converted tensor holds its source's values in the right places (not only the right shape)."""
        shapes = reference_shapes()
        ref, offset = {}, 0
        for k in sorted(shapes):  # distinct values everywhere: a transpose or a swapped key shows
            n = torch.Size(shapes[k]).numel()
            ref[k] = torch.arange(offset, offset + n, dtype=torch.float32).reshape(shapes[k])
            offset += n
        out = convert_reference_state_dict(ref)
        dw, gate = "latent.0.attn.dw_kernel", "latent.0.attn.lambda_dw"
        self.assertEqual(tuple(ref[dw].shape), (1, 1152, 1, 3, 3))
        torch.testing.assert_close(out["latent.0.attn.qkv_dwconv.weight"][:, 0], ref[dw][0, :, 0], rtol=0, atol=0)
        torch.testing.assert_close(out["latent.0.attn.qkv_dwconv.gate"], ref[gate].flatten(), rtol=0, atol=0)
        torch.testing.assert_close(
            out["decoder_level1.0.ffn.dwconv.weight"][5, 0], ref["decoder_level1.0.ffn.dw_kernel"][0, 5, 0]
        )
        torch.testing.assert_close(out["patch_embed.weight"], ref["patch_embed.proj.weight"], rtol=0, atol=0)
        torch.testing.assert_close(out["output.weight"], ref["output.weight"], rtol=0, atol=0)
        # every source value lands exactly once
        torch.testing.assert_close(
            torch.cat([v.flatten() for v in out.values()]).sort().values, torch.arange(offset, dtype=torch.float32)
        )

    def test_same_size_wrong_layout_refused(self):
        ref = zeros_state()
        ref["output.weight"] = ref["output.weight"].reshape(48, 1, 3, 3)  # the right numel, the wrong shape
        with self.assertRaisesRegex(ValueError, "output.weight"):
            convert_reference_state_dict(ref)

    def _refusal(self, ref: dict) -> str:
        """The message of the ValueError converting ``ref`` raises."""
        with self.assertRaises(ValueError) as ctx:
            convert_reference_state_dict(ref)
        return str(ctx.exception)

    def test_strict_errors_name_keys(self):
        ref = zeros_state()
        del ref["output.weight"]
        ref["extra.weight"] = torch.zeros(1)
        ref["latent.0.attn.temperature"] = torch.zeros(4, 1, 1)
        msg = self._refusal(ref)
        self.assertIn("output.weight", msg)
        self.assertIn("extra.weight", msg)
        self.assertIn("latent.0.attn.temperature", msg)

    def test_misshaped_keys_are_not_also_reported_missing(self):
        ref = zeros_state()
        ref["output.weight"] = ref["output.weight"].reshape(48, 1, 3, 3)
        msg = self._refusal(ref)
        self.assertIn("1 key(s) with a different shape: output.weight (48, 1, 3, 3) -> output.weight expects", msg)
        self.assertNotIn("missing", msg)
        self.assertNotIn("unexpected", msg)

    def test_long_key_lists_are_cut_at_ten(self):
        ref = zeros_state()
        extra = [f"extra{i:02d}.weight" for i in range(12)]
        ref.update({k: torch.zeros(1) for k in extra})
        with self.assertRaisesRegex(ValueError, "12 unexpected key") as ctx:
            convert_reference_state_dict(ref)
        self.assertIn(", ".join(extra[:10]) + " ... and 2 more", str(ctx.exception))
        self.assertNotIn(extra[10], str(ctx.exception))
        for k in extra[2:]:  # exactly ten: all named, nothing more
            del ref[k]
        ref.update({f"other{i}.bias": torch.zeros(1) for i in range(8)})
        with self.assertRaises(ValueError) as ctx:
            convert_reference_state_dict(ref)
        self.assertRegex(str(ctx.exception), r"10 unexpected key\(s\): extra00.weight, [^;]*other7.bias$")

    def test_wrong_hyper_parameters(self):
        with self.assertRaisesRegex(ValueError, "different shape"):
            convert_reference_state_dict(zeros_state(), TAT(dim=8, num_blocks=(4, 6, 6, 8)))

    def test_loader_unwraps_published_checkpoints(self):
        ref = zeros_state()
        wrappers = [
            ref,
            {"state_dict": ref, "epoch": 3},
            {f"module.{k}": v for k, v in ref.items()},
            {
                "step": torch.tensor(5),
                **{f"ema_model.{k}": v for k, v in ref.items()},
                **{f"online_model.{k}": v for k, v in ref.items()},
            },
        ]
        with tempfile.TemporaryDirectory() as d:
            for i, obj in enumerate(wrappers):
                path = os.path.join(d, f"ckpt{i}.pth")
                torch.save(obj, path)
                self.assertEqual(len(load_reference_checkpoint(path)), 575)

    def test_loader_unwraps_three_levels_and_mixed_wrappers(self):
        ref = zeros_state()
        wrappers = [
            {"state_dict": {"model": {"params_ema": ref}}, "epoch": 3},  # three levels deep
            {"params_ema": ref, "iter": torch.tensor(1000)},  # a counter tensor beside the wrapped weights
        ]
        with tempfile.TemporaryDirectory() as d:
            for i, obj in enumerate(wrappers):
                path = os.path.join(d, f"ckpt{i}.pth")
                torch.save(obj, path)
                self.assertEqual(len(load_reference_checkpoint(path)), 575)

    def test_loader_names_what_it_found_instead_of_weights(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ckpt.pth")
            torch.save({"optimizer": {"lr": 1.0}, "epoch": 3}, path)
            with self.assertRaisesRegex(
                ValueError, r"ckpt.pth: .*no tensors found \(top-level keys: epoch, optimizer\)"
            ):
                load_reference_checkpoint(path)
            torch.save([torch.zeros(1)], path)
            with self.assertRaisesRegex(ValueError, "ckpt.pth: .*expected a state dict .*got list"):
                load_reference_checkpoint(path)
            # a stray key beside module.-prefixed weights: keys are named as they are in the file, never half-stripped
            torch.save({"step": torch.zeros(1), **{f"module.{k}": v for k, v in zeros_state().items()}}, path)
            with self.assertRaisesRegex(ValueError, r"576 unexpected key\(s\): step, module\.") as ctx:
                load_reference_checkpoint(path)
            self.assertIn("575 missing key(s)", str(ctx.exception))

    def test_loader_refuses_code_and_names_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "evil.pth")
            with open(path, "wb") as f:
                pickle.dump({"x": _Payload()}, f)
            with self.assertRaisesRegex(ValueError, "evil.pth.*safely"):
                load_reference_checkpoint(path)
            with self.assertRaisesRegex(ValueError, "no such"):
                load_reference_checkpoint(os.path.join(d, "missing.pth"))


if __name__ == "__main__":
    unittest.main()
