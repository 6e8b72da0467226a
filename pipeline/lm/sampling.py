"""Sampling, shared by PPO's rollouts, evaluation and the TRL stages: batched sampling from a policy
(left padding, KV cache), truncated at the first EOS (`lm.logprobs` scores what it samples).

Sampling comes from our settings alone. PPO's log-probs, ratios and KL are those of softmax(logits / temperature)
over the whole vocabulary, so a rollout drawn from anything else is off-policy. transformers 5.x fills every
field that the GenerationConfig passed to `generate` leaves unset from `model.generation_config`, and instruct
models ship sampling defaults there (Qwen2.5-Instruct: repetition_penalty 1.05-1.1, top_k 20, top_p 0.8):
`generation_config` states every logits processor's field at its neutral value, and `generate` makes that config
the model's own while it samples, so the fields whose neutral value is "unset" have nothing to be filled from
either. The model keeps its own config otherwise (and saves it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import GenerationConfig

from pipeline.common.config import ConfigError

# Each field that can change which token is drawn, at the value that turns its logits processor (or decoding
# mode) off. The neutral value of the others (bad_words_ids, sequence_bias, suppress_tokens, min_new_tokens,
# min_p, forced_*_token_id, watermarking_config, stop_strings, ...) is None, which generate() would fill in from
# the model: `our_config_only` takes care of those.
NEUTRAL_FIELDS = dict(
    num_beams=1, num_return_sequences=1, guidance_scale=1.0, repetition_penalty=1.0,
    encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_length=0,
    typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, renormalize_logits=False, remove_invalid_values=False,
    output_scores=False, return_dict_in_generate=False,
)  # fmt: skip
_NOT_SAMPLING = {"transformers_version", "_from_model_config"}


def check_untruncated(top_k: int | None, top_p: float, stage: str) -> None:
    """Refuse top-k / top-p sampling: the log-probs are computed over the whole vocabulary."""

    if (top_k or 0) != 0 or top_p != 1.0:
        raise ConfigError(
            f"{stage} samples from softmax(logits / temperature) over the whole vocabulary, the distribution its "
            f"log-probs and KL are computed from; top_k={top_k} / top_p={top_p} would truncate it (off-policy). "
            "Leave top_k unset (or 0) and top_p at 1.0."
        )


def generation_config(max_new_tokens: int, temperature: float, tokenizer) -> GenerationConfig:
    """Plain sampling at `temperature`, every other logits processor off, stated field by field."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
        **NEUTRAL_FIELDS,
    )


def _transformers_model(model):
    """The transformers model whose generation_config generate() reads, under our policy or a peft wrapper."""
    if hasattr(model, "transformers_model"):
        return model.transformers_model()
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def set_aside(model, config: GenerationConfig) -> list[str]:
    """The model's own generation settings that sampling with `config` ignores, as 'field=value'."""
    ours = config.to_dict()
    own = _transformers_model(model).generation_config.to_diff_dict()
    return [f"{k}={v!r}" for k, v in sorted(own.items()) if k not in _NOT_SAMPLING and ours.get(k) != v]


@contextmanager
def our_config_only(model, config: GenerationConfig) -> Iterator[None]:
    """Within this context `config` is the model's generation config: generate() has nothing else to fill in."""
    model = _transformers_model(model)
    own = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = own


def sampling_summary(stage: str, config: GenerationConfig, set_aside: list[str]) -> str:
    """The log line saying how `stage` samples and what of the model's generation config it ignores."""
    ignored = ", ".join(set_aside) if set_aside else "nothing"
    return (
        f"{stage} samples from softmax(logits / {config.temperature}) with no other logits processor; "
        f"set aside from the model's generation_config: {ignored}"
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
        with our_config_only(policy, config):
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


def first_eos_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True on every token up to and including the first EOS; the whole row when there is no EOS."""
    is_eos = responses == eos_token_id
    # Number of EOS tokens strictly before each position: > 0 means we are past the first EOS.
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos.long()
    return eos_before == 0


def truncate_after_eos(responses: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Replace everything after the first EOS by padding (generation may run on past it in a batch)."""
    return torch.where(first_eos_mask(responses, eos_token_id), responses, pad_token_id)


def decode_responses(tokenizer, responses, mask) -> tuple[list[str], list[bool], list[int]]:
    """Each response's text (up to `mask`, special tokens dropped), whether it ended with EOS, and its length."""
    ended = (responses == tokenizer.eos_token_id).any(1).tolist()
    lengths = mask.sum(1).tolist()
    texts = tokenizer.batch_decode(
        responses.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True
    )
    return texts, ended, lengths
