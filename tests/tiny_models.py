"""Tiny random causal LMs of the common architectures, built offline from configs with the tiny tokenizer.

Each is a stand-in for a hub checkpoint of that family (hidden size 32, 2 layers), saved with `save_pretrained`
so every stage loads it exactly as it would load the real model. The configs keep each family's own defaults
where they matter to us (OPT's dropout 0.1, GPT-2's learned positions and Conv1D layers, Qwen2's QKV bias and
tied embeddings, Gemma2's logit soft-capping and sliding window), because those are what can break PPO.

    python -m tests.tiny_models gpt2 /tmp/gpt2 --corpus runs/tiny/data/pretrain   # one model dir, by hand
"""

from __future__ import annotations

import argparse
from pathlib import Path

WIDTH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
MAX_POSITIONS = 256

# name -> (transformers config class, family-specific settings on top of WIDTH)
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(WIDTH, num_key_value_heads=1)),  # grouped-query attention, RoPE
    "qwen2": ("Qwen2Config", dict(WIDTH, num_key_value_heads=1, tie_word_embeddings=True)),  # QKV bias
    "mistral": ("MistralConfig", dict(WIDTH, num_key_value_heads=1, head_dim=16, sliding_window=16)),
    "gemma2": (
        "Gemma2Config",
        dict(
            WIDTH,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=16,
            query_pre_attn_scalar=16,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),  # fmt: skip
    "phi3": ("Phi3Config", dict(WIDTH, num_key_value_heads=2)),  # fused qkv_proj / gate_up_proj
    "gpt2": ("GPT2Config", dict(n_embd=32, n_inner=64, n_layer=2, n_head=2)),  # learned positions, Conv1D
    "opt": (
        "OPTConfig",
        dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32),
    ),  # positions from the attention mask; functional dropout 0.1 by default
    "gpt_neox": ("GPTNeoXConfig", dict(WIDTH)),  # partial rotary, parallel residual
}


def tiny_tokenizer(corpus_dir: str | Path, num_texts: int = 3000, vocab_size: int = 1000):
    """The built-in recipe's tokenizer (byte-level BPE, pad != eos), trained as pipeline/base.py trains it."""
    from datasets import load_from_disk

    from pipeline.base import train_tokenizer

    texts = load_from_disk(str(corpus_dir)).select(range(num_texts))["text"]
    return train_tokenizer(texts, vocab_size=vocab_size, max_length=128)


def eos_only(tokenizer):
    """The tokenizer with EOS as its only special token, padding with it: GPT-2's tokenizer has nothing else, so a
    distinct pad token has to be added to the vocabulary. (Its other special tokens become plain vocabulary.)"""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] == tokenizer.eos_token]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.eos_token,
        model_max_length=tokenizer.model_max_length,
        chat_template=tokenizer.chat_template,
    )


def build_model_dir(
    architecture: str,
    tokenizer,
    out: str | Path,
    pad_is_eos: bool = False,
    generation: dict | None = None,
    config: dict | None = None,
    seed: int = 0,
) -> Path:
    """A random `architecture` model and its tokenizer saved to `out`; `pad_is_eos` gives it Llama 3's habit of
    padding with EOS, `generation` extra fields for its generation_config.json (as instruct models ship them),
    `config` settings on top of the architecture's."""
    import torch
    import transformers

    out = Path(out)
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    class_name, settings = ARCHITECTURES[architecture]
    positions = "n_positions" if architecture == "gpt2" else "max_position_embeddings"
    model_config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{positions: MAX_POSITIONS, **settings, **(config or {})},
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(model_config)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(generation or {}),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("architecture", choices=sorted(ARCHITECTURES))
    parser.add_argument("out")
    parser.add_argument("--corpus", default="runs/tiny/data/pretrain", help="datasets dir with `text`")
    parser.add_argument("--pad_is_eos", action="store_true")
    args = parser.parse_args(argv)
    path = build_model_dir(args.architecture, tiny_tokenizer(args.corpus), args.out, args.pad_is_eos)
    print(f"Saved a random tiny {args.architecture} to {path}")


if __name__ == "__main__":
    main()
