"""The model card (README.md) pushed with a stage's output: what it is, what it came from, how to load it.

Built only from files on disk (the recipe's YAML, adapter_config.json / config.json, eval.json), never from the
environment; what it takes from a recipe passes the one secret rule (pipeline.common.redact), so no token written
into a YAML file reaches the card either. Metadata goes through `huggingface_hub.ModelCardData`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCardData

from pipeline.common.config import load_yaml_text
from pipeline.common.redact import is_secret

STAGE_TITLES = {
    "base": "base language model (pretrained from scratch on the built-in corpus)",
    "sft": "supervised fine-tuned (SFT) policy, InstructGPT step 1",
    "reward": "reward model, InstructGPT step 2",
    "ppo": "PPO-tuned policy (RLHF), InstructGPT step 3",
    "grpo": "GRPO-tuned policy (TRL's GRPOTrainer on the run's reward model), an alternative to step 3's PPO",
    "rloo": "RLOO-tuned policy (TRL's RLOOTrainer on the run's reward model), an alternative to step 3's PPO",
    "dpo": "DPO-tuned policy (TRL's DPOTrainer on the run's preference pairs), an alternative to step 3's PPO",
}

# Recipe keys worth showing on a card, in this order (whichever the stage's YAML sets).
KEY_HYPERPARAMETERS = (
    "model_name_or_path", "sft_model_path", "reward_model_path", "use_peft", "lora_r", "lora_alpha",
    "lora_dropout", "lora_target_modules", "load_in_4bit", "load_in_8bit", "dtype", "learning_rate",
    "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "total_episodes", "num_ppo_epochs", "num_mini_batches",
    "value_head", "normalize_scores", "kl_coef", "adaptive_kl", "target_kl", "cliprange", "vf_coef", "gamma", "lam",
    "response_length", "temperature", "beta", "num_generations", "max_completion_length", "seed",
)  # fmt: skip
DATA_KEYS = ("source", "sft_data", "preference_data", "preference_test_data")


@dataclass
class CardInfo:
    repo_id: str
    stage: str
    weights: str  # "adapter" or "merged" (a plain model)
    base_model: str | None
    base_model_is_local: bool
    hyperparameters: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    eval_results: dict | None = None
    license: str | None = None
    plots: list[str] = field(default_factory=list)


def looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not Path(value).exists() and not Path(value).suffix


def card_metadata(info: CardInfo) -> ModelCardData:
    hub_data = sorted({v for v in info.data.values() if isinstance(v, str) and looks_like_hub_id(v)})
    return ModelCardData(
        base_model=info.base_model if info.base_model and not info.base_model_is_local else None,
        datasets=hub_data or None,
        library_name="peft" if info.weights == "adapter" else "transformers",
        pipeline_tag="text-classification" if info.stage == "reward" else "text-generation",
        license=info.license,
        tags=["rlhf", "instructgpt", info.stage, "trl"],
    )


def loading_snippet(info: CardInfo) -> str:
    head = "SequenceClassification" if info.stage == "reward" else "CausalLM"
    if info.weights == "adapter":
        lines = [
            f"from peft import AutoPeftModelFor{head}",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelFor{head}.from_pretrained("{info.repo_id}")  # fetches the base model too',
        ]
    else:
        lines = [
            f"from transformers import AutoModelFor{head}, AutoTokenizer",
            "",
            f'model = AutoModelFor{head}.from_pretrained("{info.repo_id}")',
        ]
    lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{info.repo_id}")')
    lines.append('prompt = "\\n\\nHuman: Tell me about cats.\\n\\nAssistant:"')
    if info.stage == "reward":
        lines += [
            'inputs = tokenizer(prompt + " Cats are soft." + tokenizer.eos_token, return_tensors="pt")',
            "score = model(**inputs).logits[0, 0].item()  # higher = preferred",
        ]
    else:
        lines += [
            'inputs = tokenizer(prompt, return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=64, do_sample=True, temperature=0.7)",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        ]
    return "\n".join(lines)


def render_card(info: CardInfo) -> str:
    metadata = card_metadata(info).to_yaml()
    kind = "a LoRA adapter" if info.weights == "adapter" else "full (merged) weights"
    body = [
        f"# {info.repo_id.split('/')[-1]}",
        "",
        f"The {STAGE_TITLES.get(info.stage, info.stage)} of an RLHF run (SFT -> reward model -> PPO) built with "
        f"the Hugging Face stack (transformers, TRL, PEFT). This repository holds {kind}.",
        "",
        "## Base model",
        "",
    ]
    if info.base_model and info.base_model_is_local:
        body.append(
            f"`{info.base_model}` (a local model, not on the Hub: push it too and pass `--base_model_repo` so the "
            "adapter can find it)."
        )
    else:
        body.append(f"`{info.base_model or 'unknown'}`")
    body += ["", "## Data", ""]
    body += [f"- `{k}`: `{v}`" for k, v in info.data.items()] or ["- not recorded"]
    body += ["", "## Key hyperparameters", "", "| setting | value |", "|---|---|"]
    body += [f"| `{k}` | `{v}` |" for k, v in info.hyperparameters.items()] or ["| (not recorded) | |"]
    if info.eval_results:
        body += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        for label, value in eval_rows(info.stage, info.eval_results):
            if value is not None:
                body.append(f"| {label} | {value:.3f} |")
        counts = info.eval_results.get("counts", {})
        if counts:
            body.append("")
            body.append(
                f"On {counts.get('num_prompts', '?')} held-out prompts and {counts.get('num_preference_pairs', '?')} "
                "held-out preference pairs; all figures in `rlhf_eval.json`."
            )
    for plot in info.plots:
        body += ["", f"![{Path(plot).stem}]({plot})"]
    body += ["", "## How to load it", "", "```python", loading_snippet(info), "```", ""]
    if info.weights == "adapter":
        body.append('Prefer full weights? The same run can push them: `make push ARGS="--weights merged"`.')
        body.append("")
    return f"---\n{metadata}\n---\n\n" + "\n".join(body)


def eval_rows(stage: str, eval_results: dict) -> list[tuple[str, float | None]]:
    """The card's evaluation rows (label, value), from eval.json's `policies`: the stage's own policy beside the
    SFT policy (PPO's for the SFT, reward and PPO stages, the run's headline)."""
    policies = eval_results.get("policies", {})
    name = stage if stage in policies and stage not in ("sft", "reward") else "ppo"
    sft, policy, title = policies.get("sft", {}), policies.get(name, {}), name.upper()
    rows = [
        ("reward-model accuracy on held-out preference pairs", eval_results.get("reward_model_accuracy")),
        ("mean reward-model score, SFT policy", sft.get("reward_model_score")),
        (f"mean reward-model score, {title} policy", policy.get("reward_model_score")),
        ("mean labeler score, SFT policy (built-in task)", sft.get("labeler_score")),
        (f"mean labeler score, {title} policy (built-in task)", policy.get("labeler_score")),
        (f"KL({title} || SFT) per answer, nats", policy.get("kl_from_sft")),
    ]
    if name != "ppo":  # the alternatives' cards have quoted their win rate from the start; PPO's never has
        win_rate = f"share of prompts where the labeler prefers {title}'s answer"
        rows.append((win_rate, policy.get("labeler_win_rate_vs_sft")))
    return rows


def read_hyperparameters(recipe_file: Path) -> dict:
    """The KEY_HYPERPARAMETERS the stage's YAML sets, less any that holds a secret."""
    return public_keys(recipe_file, KEY_HYPERPARAMETERS)


def read_data_sources(data_file: Path) -> dict:
    """The DATA_KEYS data.yaml sets (not null), less any that holds a secret."""
    return {k: v for k, v in public_keys(data_file, DATA_KEYS).items() if v is not None}


def public_keys(recipe_file: Path, keys: tuple[str, ...]) -> dict:
    """These keys of a recipe YAML file, in this order, where set and not a secret (pipeline.common.redact)."""
    if not recipe_file.is_file():
        return {}
    config = load_yaml_text(recipe_file.read_text(), f"Recipe file {recipe_file}") or {}
    return {k: config[k] for k in keys if k in config and not is_secret(k, config[k])}


def read_eval(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
