"""Rollouts: batched sampling from the current policy (left padding, KV cache), truncated at the first EOS."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from pipeline.ppo.core import truncate_after_eos


def generation_config(args, tokenizer) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=args.response_length,
        do_sample=True,
        temperature=args.temperature,
        top_k=args.top_k or 0,
        top_p=args.top_p,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


def tokenize_prompts(
    tokenizer, prompts: list[str], max_prompt_length: int, device
) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch; prompts longer than `max_prompt_length` keep their end (the Assistant turn)."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    batch = tokenizer(
        prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_length
    )
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


@torch.no_grad()
def generate(
    policy,
    queries: dict[str, torch.Tensor],
    config: GenerationConfig,
    chunk_size: int,
    synced_gpus: bool | None = None,
) -> torch.Tensor:
    """Sample responses for left-padded `queries` in chunks; returns (B, response_length), padded after EOS.

    `synced_gpus=True` keeps every rank decoding until all have finished: with sharded weights (FSDP, ZeRO-3) each
    decoding step gathers them collectively, so a rank that stopped early would hang the others. None lets
    transformers decide (it detects ZeRO-3 and its own FSDP, not Accelerate's FSDP2).
    """
    pad, eos = config.pad_token_id, config.eos_token_id
    responses = []
    for i in range(0, queries["input_ids"].shape[0], chunk_size):
        input_ids = queries["input_ids"][i : i + chunk_size]
        attention_mask = queries["attention_mask"][i : i + chunk_size]
        out = policy.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            synced_gpus=synced_gpus,
        )
        response = out[:, input_ids.shape[1] :]
        # Generation stops early when every row has ended; pad to a fixed width so batches line up across ranks.
        response = torch.nn.functional.pad(
            response, (0, config.max_new_tokens - response.shape[1]), value=pad
        )
        responses.append(truncate_after_eos(response, eos, pad))
    return torch.cat(responses)
