"""Stage 0 of an offline recipe: a tokenizer and a tiny causal LM pretrained from scratch, offline.

Real recipes start from a hub model and skip this stage. Here we stand in for that pretrained model: a
byte-level BPE tokenizer trained on the recipe's corpus and a small Llama trained on it with the stock
`transformers.Trainer`, saved with `save_pretrained` so every later stage loads it exactly like a hub model.
The corpus is `runs/<recipe>/data/pretrain` (a `text` column): the built-in task's own pretraining dialogues for
recipes/tiny; for a recipe of your own data, its train texts (data.yaml `pretrain_corpus: true`), so the base
knows your task's language before you rent a GPU. Texts are packed into rows of `max_length` tokens (TRL's
`pack_dataset`), each attending only to itself, so no step computes padding (`packing: false` pads one text a row).

    python -m pipeline.base --config recipes/tiny/base.yaml
    python -m pipeline.base --config recipes/custom-example/base.yaml
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DataCollatorForLanguageModeling,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)
from trl import pack_dataset

from pipeline.common.config import UserError, parse_config, required, run_main
from pipeline.common.data import read_saved
from pipeline.common.training import RunOutputArguments, run_trainer_stage, save_trained_weights
from pipeline.lm.packing import PackedCollator

# HH-RLHF-style chat template: the same text the built-in task and the HH converter produce, so `messages` and
# prompt/completion data render identically. `{% generation %}` marks assistant tokens for assistant-only loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '\\n\\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\nAssistant:' }}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


@dataclass
class BaseModelArguments(RunOutputArguments):
    """What to pretrain on and how big the model is (the optimisation settings are TrainingArguments)."""

    corpus_path: str | None = required("datasets dir with a `text` column (runs/<recipe>/data/pretrain)")
    vocab_size: int = field(default=1000, metadata={"help": "BPE vocabulary size, special tokens included"})
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    max_length: int = field(default=128, metadata={"help": "training sequence length (longer texts are cut)"})
    eval_fraction: float = field(
        default=0.05, metadata={"help": "held-out share of the corpus for eval loss"}
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "pack whole texts into rows of max_length tokens (TRL's best-fit-decreasing pack_dataset), "
            "each text attending only to itself (position ids restart per text): the loss of unpacked "
            "training without the padding; per_device_train_batch_size then counts rows, not texts"
        },
    )
    split_digits: bool = field(
        default=False,
        metadata={"help": "one token per digit (as Llama and Qwen tokenize numbers), so a small model can copy and "
                  "compare numbers; off for the built-in task, whose text has none"},
    )  # fmt: skip


CONFIG_TYPES = (BaseModelArguments, TrainingArguments)


def load_corpus(path: str):
    if not Path(path).exists():
        raise UserError(
            f"Pretraining corpus {path} does not exist. Build it first: make data RECIPE=recipes/<name> (python -m "
            "data_prep build --config recipes/<name>/data.yaml; converted data need `pretrain_corpus: true` "
            "there), or set corpus_path."
        )
    corpus = read_saved(Path(path), "Pretraining corpus")
    if "text" not in corpus.column_names:
        raise UserError(f"Corpus {path} has columns {corpus.column_names}; expected a `text` column.")
    return corpus


def train_tokenizer(texts, vocab_size: int, max_length: int, split_digits: bool = False):
    """Byte-level BPE (the GPT-2/Llama-3 family's scheme): any string is encodable, no unknown tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), tokenizer.pre_tokenizer]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **SPECIAL_TOKENS
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(args: BaseModelArguments, tokenizer, seed: int):
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_attention_heads,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No KV cache while training: besides being useless there, a cache turns off transformers' detection of
        # packed texts, and each text would attend to the ones before it in its row.
        use_cache=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def main(args=None, callbacks=None):
    """Run the stage; `callbacks` (TrainerCallback list) lets tests and tools observe the trainer."""
    model_args, training_args = parse_config(CONFIG_TYPES, args)
    output_dir = training_args.output_dir

    def load_data():
        set_seed(training_args.seed)
        return load_corpus(model_args.corpus_path).shuffle(seed=training_args.seed)

    def build_trainer(corpus, resume, stage_callbacks):
        tokenizer = train_tokenizer(
            corpus["text"], model_args.vocab_size, model_args.max_length, model_args.split_digits
        )
        eos = tokenizer.eos_token

        def tokenize(batch):
            return tokenizer(
                [t + eos for t in batch["text"]], truncation=True, max_length=model_args.max_length
            )

        tokenized = corpus.map(tokenize, batched=True, remove_columns=corpus.column_names)
        splits = tokenized.train_test_split(test_size=model_args.eval_fraction, seed=training_args.seed)
        texts = len(splits["train"])
        if model_args.packing:
            splits = pack_dataset(
                splits.remove_columns("attention_mask"), model_args.max_length, strategy="bfd"
            )
            collator = PackedCollator(tokenizer.pad_token_id)
            # The collator needs seq_lengths, which forward() does not take.
            training_args.remove_unused_columns = False
        else:
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)

        model = build_model(model_args, tokenizer, training_args.seed)
        rows = f" packed into {len(splits['train'])} rows of up to {model_args.max_length} tokens"
        print(
            f"Pretraining a {model.num_parameters() / 1e6:.2f}M-parameter Llama on {texts} texts"
            f"{rows if model_args.packing else ''}."
        )
        return Trainer(model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["test"],
                       data_collator=collator, processing_class=tokenizer, callbacks=stage_callbacks)  # fmt: skip

    def measure(trainer, train_result, resume):
        metrics = trainer.evaluate()
        metrics["uniform_baseline_loss"] = math.log(len(trainer.processing_class))
        metrics["num_parameters"] = trainer.model.num_parameters()
        return metrics

    def fill_artifact(trainer, folder, metrics):
        """The model with its generation defaults, and the tokenizer: loadable like a hub model."""
        tokenizer = trainer.processing_class
        trainer.model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
            max_new_tokens=48,
        )
        save_trained_weights(trainer, folder)
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(folder)

    metrics = run_trainer_stage("base", (model_args, training_args), load_data=load_data,
                                build_trainer=build_trainer, measure=measure, fill_artifact=fill_artifact,
                                callbacks=callbacks)  # fmt: skip
    print(
        f"Held-out loss {metrics['eval_loss']:.3f} (uniform baseline {metrics['uniform_baseline_loss']:.3f}); "
        f"saved to {output_dir}"
    )
    return metrics


if __name__ == "__main__":
    run_main(main)
