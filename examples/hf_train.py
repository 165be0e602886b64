"""A Hugging Face `Trainer` script that rides `slmjobs run` (pip install slmjobs[hf]): one
callback and two lines. The model is built from a config (no download). Alone it trains to the end.

    slmjobs run --gpus 1 --walltime 04:00:00 -- python examples/hf_train.py --max-steps 100000
"""

import argparse
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from slmjobs.hf import HandOff, resume_from


class Stretch(TrainerCallback):
    """The tests stretch steps, so that link counts follow from the walltime."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_begin(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def dataset(n: int = 256, length: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (n, length), generator=generator)
    return [{"input_ids": row, "labels": row} for row in ids]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--weights", help="write the final weights here (torch.save)")
    args = parser.parse_args()
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    handoff = HandOff()
    training = TrainingArguments(
        output_dir=handoff.output_dir, max_steps=args.max_steps, per_device_train_batch_size=8,
        learning_rate=1e-3, seed=0, save_strategy="no", report_to="none", use_cpu=True,
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training, train_dataset=dataset(),
                      callbacks=[handoff, Stretch(args.step_seconds)])
    trainer.train(resume_from_checkpoint=resume_from())
    print(f"global_step {trainer.state.global_step}", flush=True)
    if handoff.exit_status() == 0 and args.weights:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, args.weights)
    return handoff.exit_status()


if __name__ == "__main__":
    sys.exit(main())
