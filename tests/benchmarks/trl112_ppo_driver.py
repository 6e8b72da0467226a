"""Reference PPO run with `trl==1.12.0`'s experimental `PPOTrainer` (the last TRL release that has PPO).

Runs inside the benchmark's own virtualenv (`.bench/trl112`, made by `bench_ppo.py`), never in the project's
`.venv`: it imports nothing from `pipeline`. It holds TRL's four full models (policy, frozen reference,
reward, value) as TRL's own example script does, and writes one JSON line per PPO step to `--metrics_path`
(flushed at once, so the benchmark can time each step from outside, the same way it times our trainer).

    .bench/trl112/bin/python tests/benchmarks/trl112_ppo_driver.py --sft_model_path runs/tiny/sft/merged \
        --reward_model_path runs/tiny/reward --prompts_path runs/tiny/data/prompts --output_dir /tmp/ref \
        --metrics_path /tmp/ref/metrics.jsonl --total_episodes 64 --per_device_train_batch_size 16 ...
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from datasets import load_from_disk  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402


class JsonlMetrics(TrainerCallback):
    """One line per logged PPO step, with a wall-clock stamp, written and flushed immediately."""

    def __init__(self, path):
        self.file = open(path, "a")  # noqa: SIM115 (closed at train end)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "episode" in logs:
            row = {"step": state.global_step, "time": time.time(), **logs}
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.file.close()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft_model_path", required=True, help="plain causal LM dir (policy and reference)")
    p.add_argument(
        "--reward_model_path", required=True, help="plain sequence-classification dir (reward, value)"
    )
    p.add_argument("--prompts_path", required=True, help="datasets.save_to_disk dir with a `prompt` column")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--metrics_path", required=True)
    p.add_argument("--total_episodes", type=int, default=64)
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--num_ppo_epochs", type=int, default=4)
    p.add_argument("--num_mini_batches", type=int, default=1)
    p.add_argument("--local_rollout_forward_batch_size", type=int, default=16)
    p.add_argument("--response_length", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--missing_eos_penalty", type=float, default=None)
    p.add_argument("--kl_coef", type=float, default=0.05)
    p.add_argument("--learning_rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lora_r", type=int, default=0, help="0: full fine-tuning (TRL's default); >0: LoRA policy"
    )
    p.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: the four models' weights in bfloat16 and bf16 autocast (PPOConfig bf16=True)")  # fmt: skip
    return p.parse_args()


def main():
    a = parse_args()
    if a.num_threads:
        torch.set_num_threads(a.num_threads)
    tokenizer = AutoTokenizer.from_pretrained(a.sft_model_path, padding_side="left")
    if tokenizer.pad_token is None:
        raise SystemExit(f"{a.sft_model_path}: the tokenizer has no pad token; TRL's PPO needs one.")

    prompts = load_from_disk(a.prompts_path)
    # TRL 1.12 takes tokenized prompts: the `input_ids` column only, padded on the left by its collator.
    dataset = prompts.map(
        lambda row: {"input_ids": tokenizer(row["prompt"])["input_ids"]},
        remove_columns=prompts.column_names,
    )

    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(a.sft_model_path, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        a.reward_model_path, num_labels=1, dtype=dtype
    )
    value_model = AutoModelForSequenceClassification.from_pretrained(
        a.reward_model_path, num_labels=1, dtype=dtype
    )
    peft_config = None
    if a.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=a.lora_r, lora_alpha=2 * a.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        ref_policy = None  # TRL then uses the policy with its adapter disabled
    else:
        ref_policy = AutoModelForCausalLM.from_pretrained(a.sft_model_path, dtype=dtype)

    config = PPOConfig(
        output_dir=a.output_dir,
        total_episodes=a.total_episodes,
        per_device_train_batch_size=a.per_device_train_batch_size,
        gradient_accumulation_steps=a.gradient_accumulation_steps,
        num_ppo_epochs=a.num_ppo_epochs,
        num_mini_batches=a.num_mini_batches,
        local_rollout_forward_batch_size=a.local_rollout_forward_batch_size,
        response_length=a.response_length,
        temperature=a.temperature,
        missing_eos_penalty=a.missing_eos_penalty,
        kl_coef=a.kl_coef,
        learning_rate=a.learning_rate,
        seed=a.seed,
        stop_token="eos",
        # TRL's PPOConfig defaults to bf16 and gradient checkpointing; the benchmark sets the precision on both
        # sides and compares without checkpointing.
        bf16=a.precision == "bf16",
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        num_sample_generations=0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(min(8, len(dataset)))),
        peft_config=peft_config,
        callbacks=[JsonlMetrics(a.metrics_path)],
    )
    start = time.time()
    trainer.train()
    summary = {"train_seconds": time.time() - start, "episodes": trainer.state.episode}
    if torch.cuda.is_available():
        summary["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    print("TRL112_SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
