"""The offline stand-in for a pretrained hub model: it must load like one and must have learned the language."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from pipeline.base import CHAT_TEMPLATE, train_tokenizer
from tests.conftest import RECIPE, record_learning


@pytest.mark.learning
def test_base_model_learned_well_below_uniform(tiny_base):
    results = json.loads((tiny_base / "eval_results.json").read_text())
    uniform = math.log(json.loads((tiny_base / "config.json").read_text())["vocab_size"])
    assert results["uniform_baseline_loss"] == pytest.approx(uniform, rel=0.01)
    # A model that learned nothing sits at log(V) ~ 6.2; the built-in language is regular enough for far better.
    ratio = results["eval_loss"] / uniform  # kernel sets x seeds 0-2: 0.138 +- 0.009, worst 0.149
    record_learning("base: held-out loss / uniform loss", ratio, 0.4, higher_is_better=False)
    assert ratio < 0.4, results
    assert 2e5 < results["num_parameters"] < 5e6


def test_base_model_loads_like_a_hub_model_in_a_fresh_process(tiny_base):
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(tiny_base)!r})
model = AutoModelForCausalLM.from_pretrained({str(tiny_base)!r})
assert tok.pad_token == "<pad>" and tok.eos_token == "</s>" and tok.pad_token_id != tok.eos_token_id
assert model.config.eos_token_id == tok.eos_token_id and model.generation_config.eos_token_id == tok.eos_token_id
ids = tok.apply_chat_template([{{"role": "user", "content": "hello"}}], add_generation_prompt=True, return_tensors="pt")
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
out = model.generate(ids, max_new_tokens=8, do_sample=False)
print(repr(tok.decode(out[0])))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Human: hello" in result.stdout and "Assistant:" in result.stdout


def test_base_writes_only_safetensors_and_no_pickles(tiny_base):
    names = {p.name for p in tiny_base.iterdir()}
    assert "model.safetensors" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names), names
    assert not (tiny_base.parent / (tiny_base.name + ".tmp")).exists()
    assert "run.json" in names and not (tiny_base.parent / (tiny_base.name + ".checkpoints")).exists()


def test_base_records_its_run_and_refuses_another_config_in_its_folder(tiny_data, tmp_path):
    """Like every Trainer stage: run.json in the output; a rerun of another config into the folder is refused by
    name (nothing touched) unless overwrite_output_dir; a rerun of the same config just works."""
    from pipeline.base import main
    from pipeline.common.config import UserError

    out = tmp_path / "base"
    args = ["--config", str(RECIPE / "base.yaml"), "--corpus_path", str(tiny_data / "pretrain"),
            "--output_dir", str(out), "--max_steps", "2", "--vocab_size", "300", "--hidden_size", "32",
            "--intermediate_size", "64", "--num_hidden_layers", "1", "--disable_tqdm", "true"]  # fmt: skip
    main(args)
    record = json.loads((out / "run.json").read_text())
    assert record["stage"] == "base" and record["config"]["hidden_size"] == 32
    assert (
        record["inputs"]["corpus_path"] is not None
    )  # the corpus is fingerprinted: a rebuilt one is a new input
    weights = (out / "model.safetensors").read_bytes()

    with pytest.raises(
        UserError, match=r"another run's outputs \(its config differs in learning_rate.*--overwrite"
    ):
        main([*args, "--learning_rate", "1e-4"])
    assert (out / "model.safetensors").read_bytes() == weights

    main(args)  # the same config again
    assert (out / "model.safetensors").read_bytes() == weights  # and the same weights: it is the same run
    main([*args, "--learning_rate", "1e-4", "--overwrite_output_dir", "true"])
    assert json.loads((out / "run.json").read_text())["config"]["learning_rate"] == 1e-4


def test_tokenizer_round_trips_any_text_and_renders_the_hh_format():
    tok = train_tokenizer(
        ["\n\nHuman: hi there\n\nAssistant: hello friend."] * 50, vocab_size=300, max_length=64
    )
    text = "Ünïcode and emoji 🙂 never seen in training"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: no unknown tokens
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert rendered == "\n\nHuman: hi\n\nAssistant: yo</s>"
    assert tok.chat_template == CHAT_TEMPLATE


def test_missing_corpus_is_a_clear_error(tmp_path):
    from pipeline.base import main
    from pipeline.common.config import UserError

    args = [
        "--config",
        str(RECIPE / "base.yaml"),
        "--corpus_path",
        str(tmp_path / "none"),
        "--output_dir",
        str(tmp_path),
    ]
    with pytest.raises(UserError, match="make data"):
        main(args)


def test_split_digits_gives_every_digit_its_own_token():
    """Numbers as Llama and Qwen tokenize them (recipes/custom-example): one token per digit, however often a
    longer number occurs; off by default, so the built-in recipe's tokenizer is unchanged."""
    texts = ["That is 3000 grams. That is 4000 grams."] * 50
    split = train_tokenizer(texts, vocab_size=300, max_length=64, split_digits=True)
    ids = split(" 3000 grams")["input_ids"]
    assert split.convert_ids_to_tokens(ids)[1:5] == ["3", "0", "0", "0"]
    assert split.decode(ids) == " 3000 grams"
    merged = train_tokenizer(texts, vocab_size=300, max_length=64)
    assert len(merged(" 3000 grams")["input_ids"]) < len(ids)
