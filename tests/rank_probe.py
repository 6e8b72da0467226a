"""Run a Trainer-based stage under `accelerate launch` with a callback that records, per rank, what it saw.

    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml -m tests.rank_probe pipeline.sft --config ...

Each rank writes `$RANK_PROBE_DIR/rank<N>.json`: the first training batch it drew (to show the data is sharded),
its steps per epoch, and digests of its trainable weights at the start and the end (to show that training moved
them and that gradients were synchronised).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class RankProbe(TrainerCallback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.record: dict = {}

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        batch = next(iter(train_dataloader))
        key = "input_ids" if "input_ids" in batch else "chosen_input_ids"
        self.record.update(
            first_batch=batch[key].tolist(),
            steps_per_epoch=len(train_dataloader),
            world_size=args.world_size,
            initial_weights=weights_digest(model),
        )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.record.update(
            rank=args.process_index, global_step=state.global_step, weights=weights_digest(model)
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{args.process_index}.json").write_text(json.dumps(self.record))


if __name__ == "__main__":
    stage = importlib.import_module(sys.argv[1])
    stage.main(sys.argv[2:], callbacks=[RankProbe(os.environ["RANK_PROBE_DIR"])])
