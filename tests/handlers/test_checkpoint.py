from __future__ import annotations

import os
import tempfile
import unittest

import torch
from custom.handlers import AtomicCheckpointSaver, AtomicDiskSaver, GlobalRNGState, ResumeCheckpointLoader
from ignite.engine import Engine, Events


class TestCheckpointHandlers(unittest.TestCase):
    def test_latest_saved_atomically_and_resumed(self):
        with tempfile.TemporaryDirectory() as d:
            net = torch.nn.Linear(2, 2)
            engine = Engine(lambda e, b: None)
            AtomicCheckpointSaver(
                save_dir=d,
                save_dict={"net": net, "trainer": engine, "rng": GlobalRNGState()},
                save_interval=1,
                n_saved=1,
                interval_filename="latest.pt",
            ).attach(engine)
            engine.run([0, 1], max_epochs=3)
            self.assertEqual(sorted(os.listdir(d)), ["latest.pt"])  # replaced in place, no temp file left
            ckpt = torch.load(os.path.join(d, "latest.pt"), weights_only=True)
            self.assertEqual(ckpt["trainer"]["iteration"], 6)

            net2 = torch.nn.Linear(2, 2)
            engine2 = Engine(lambda e, b: None)
            ResumeCheckpointLoader(os.path.join(d, "latest.pt"), {"net": net2, "trainer": engine2}).attach(engine2)
            engine2.run([0, 1], max_epochs=4)
            self.assertEqual(engine2.state.iteration, 8)
            torch.testing.assert_close(net2.weight, net.weight)

    def test_numbered_checkpoints_keep_n_saved_in_a_folder_it_creates(self):
        """Without a fixed name, MONAI's numbered files are written (into a folder created on the way) and the
        oldest removed beyond ``n_saved``."""
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "new", "ckpt")
            engine = Engine(lambda e, b: None)
            AtomicCheckpointSaver(
                save_dir=out, save_dict={"net": torch.nn.Linear(2, 2)}, save_interval=1, n_saved=2, epoch_level=True
            ).attach(engine)
            engine.run([0], max_epochs=3)
            self.assertEqual(sorted(os.listdir(out)), ["net_epoch=2.pt", "net_epoch=3.pt"])
            AtomicDiskSaver(os.path.join(d, "other"), filename="latest.pt")({"w": torch.ones(1)}, "ignored.pt")
            self.assertEqual(os.listdir(os.path.join(d, "other")), ["latest.pt"])

    def test_resume_passes_the_loader_options_on(self):
        """``strict=False`` (and ``map_location``) reach MONAI's loader: a checkpoint without the bias loads."""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "latest.pt")
            src = torch.nn.Linear(2, 2)
            torch.save({"net": {"weight": src.weight.detach()}}, path)
            net = torch.nn.Linear(2, 2)
            engine = Engine(lambda e, b: None)
            ResumeCheckpointLoader(path, {"net": net}, map_location="cpu", strict=False).attach(engine)
            engine.run([0], max_epochs=1)
            torch.testing.assert_close(net.weight, src.weight)

    def test_missing_checkpoint_starts_fresh(self):
        engine = Engine(lambda e, b: None)
        ResumeCheckpointLoader("/nonexistent/latest.pt", {"trainer": engine}).attach(engine)
        engine.run([0], max_epochs=1)
        self.assertEqual(engine.state.iteration, 1)


if __name__ == "__main__":
    unittest.main()


class TestBestSaverState(unittest.TestCase):
    def test_resumed_best_is_not_overwritten_by_worse(self):
        with tempfile.TemporaryDirectory() as d:
            scores = iter([5.0, 3.0])

            def make(score_net):
                engine = Engine(lambda e, b: None)
                engine.state.key_metric_name = "val_mean_psnr"

                @engine.on(Events.EPOCH_COMPLETED)
                def _metric(e):
                    e.state.metrics["val_mean_psnr"] = next(scores)

                saver = AtomicCheckpointSaver(
                    save_dir=d, save_dict={"model": score_net}, save_key_metric=True, key_metric_filename="model.pt"
                )
                saver.attach(engine)
                return engine, saver

            first_net = torch.nn.Linear(1, 1)
            engine, saver = make(first_net)
            engine.run([0], max_epochs=1)
            state = saver.state_dict()

            engine2, saver2 = make(torch.nn.Linear(1, 1))
            saver2.load_state_dict(state)
            engine2.run([0], max_epochs=1)  # worse score: model.pt must still hold the first network
            best = torch.load(os.path.join(d, "model.pt"), weights_only=True)
            torch.testing.assert_close(best["weight"], first_net.weight.detach())
