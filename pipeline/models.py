"""Loading tokenizers and models from a path or hub id: one place for the security defaults and clear errors.

A stage output is either a plain model directory or a PEFT adapter directory (adapter_config.json pointing at
its base); both load here. `trust_remote_code` stays off unless the user's ModelConfig turns it on, and
weights are read from safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import UserError


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base_path(path: str | Path) -> str:
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def _loading_error(name: str, err: Exception) -> UserError:
    import os

    hint = "Check the path or hub id"
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name).exists():
        hint = (
            "HF_HUB_OFFLINE=1 is set and it is not in the local cache: run with network access "
            "(make ... OFFLINE=0) or point to a local directory"
        )
    return UserError(f"Could not load '{name}': {type(err).__name__}: {err}. {hint}.")


def load_tokenizer(name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """The tokenizer of a model or adapter dir, with a pad token that is never silently missing."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _loading_error(name_or_path, err) from err
    if tokenizer.pad_token is None:  # common for Llama-family hub models; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


ADDED_PAD_TOKEN = "<|pad|>"


def distinct_pad_token(tokenizer) -> bool:
    """Give a reward model's tokenizer a pad token that is not its EOS; True when a token had to be added to the
    vocabulary (the model's embeddings then need one more row).

    A sequence-classification model reads its score at the last token that is not padding. With pad == EOS
    (Llama 3 style), the EOS that ends a finished answer counts as padding, and the model cannot tell a finished
    answer from one cut off at the length limit. An unused special token of the vocabulary is taken when there is
    one (Llama 3.1's <|finetune_right_pad_id|>, Qwen's <|fim_pad|>, a reserved token), else one is added.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return False
    in_use = set(tokenizer.all_special_ids) - {tokenizer.pad_token_id}
    template = str(tokenizer.chat_template or "")
    spare = [
        token.content
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
        if token.special and token_id not in in_use and token_id != eos and token.content not in template
    ]
    by_preference = [t for t in spare if "pad" in t.lower()] + [t for t in spare if "reserved" in t.lower()]
    if by_preference:
        tokenizer.pad_token = by_preference[0]
        return False
    tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    return True


def use_distinct_pad(model, tokenizer) -> None:
    """A scorer's reward model and tokenizer agree on a pad token that is not EOS (see `distinct_pad_token`)."""
    if distinct_pad_token(tokenizer):
        # The new row only ever sits under padding (right padding, causal attention): its value never matters.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id


def model_kwargs(model_args=None) -> dict:
    """from_pretrained keyword arguments from a trl.ModelConfig (dtype, attention, 4/8-bit, remote code)."""
    if model_args is None:
        return {}
    from trl.trainer.utils import get_quantization_config

    quantization_config = get_quantization_config(model_args)
    kwargs = {
        "revision": model_args.model_revision,
        # trl 1.16's ModelConfig has no trust_remote_code field: off unless a config type adds it.
        "trust_remote_code": getattr(model_args, "trust_remote_code", False),
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype
        if model_args.dtype in (None, "auto")
        else getattr(__import__("torch"), model_args.dtype),
    }
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        from pipeline.training import kbit_device_map

        kwargs["device_map"] = kbit_device_map()
    return {k: v for k, v in kwargs.items() if v is not None}


def load_causal_lm(name_or_path: str, model_args=None, merge_adapter: bool = False, **kwargs):
    """A causal LM from a plain dir, an adapter dir (base + adapter) or a hub id."""
    from transformers import AutoModelForCausalLM

    kwargs = {**model_kwargs(model_args), **kwargs}
    try:
        if is_adapter_dir(name_or_path):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, **kwargs)
            return model.merge_and_unload() if merge_adapter else model
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise _loading_error(name_or_path, err) from err


def load_reward_model(name_or_path: str, model_args=None, **kwargs):
    """A scalar-head reward model (AutoModelForSequenceClassification, num_labels=1)."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {**model_kwargs(model_args), **kwargs}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, **kwargs)
    except (OSError, ValueError) as err:
        raise _loading_error(name_or_path, err) from err
    if model.config.pad_token_id is None:
        raise UserError(
            f"Reward model {name_or_path} has no pad_token_id in its config; the score is read at the last "
            "non-pad token, so set config.pad_token_id (the reward stage does this when it saves)."
        )
    return model
