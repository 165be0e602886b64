"""A PyTorch Lightning script that rides `slmjobs run` (pip install slmjobs[lightning]): one
callback and two lines. Alone it trains to the end.

    slmjobs run --gpus 1 --walltime 04:00:00 -- python examples/lightning_fit.py --max-steps 100000
"""

import argparse
import sys
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from slmjobs.lightning import HandOff


class Regression(L.LightningModule):
    """A tiny model: y = W x + b fitted to a fixed random linear map."""

    def __init__(self, step_seconds: float = 0.0):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.step_seconds = step_seconds  # the tests stretch steps: link counts follow walltime

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_seconds)
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01)


def data() -> DataLoader:
    """Full-batch training: every epoch is one batch, so a hand-off checkpoint is also an epoch's
    end. (Lightning resumes mid-epoch exactly only from a stateful data loader, one with
    `state_dict`/`load_state_dict`, such as torchdata's StatefulDataLoader.)"""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator) + 0.1 * torch.randn(256, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=256)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--weights", help="write the final weights here (torch.save)")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    model = Regression(args.step_seconds)
    handoff = HandOff()
    trainer = L.Trainer(max_steps=args.max_steps, callbacks=[handoff], accelerator="cpu",
                        devices=1, deterministic=True, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data(), ckpt_path=handoff.resume_from())
    print(f"global_step {trainer.global_step}", flush=True)
    if handoff.exit_status() == 0 and args.weights:
        torch.save(model.state_dict(), args.weights)
    return handoff.exit_status()


if __name__ == "__main__":
    sys.exit(main())
