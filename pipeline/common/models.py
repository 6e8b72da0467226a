"""Loading tokenizers and models: the one place that builds `from_pretrained` keyword arguments.

Every stage loads through `pretrained_kwargs` (revision, dtype, attention implementation, 4/8-bit quantization
with its device map, trust_remote_code), so a recipe's settings mean the same in SFT, reward, PPO and evaluation.
A stage output is either a plain model directory or a PEFT adapter directory (adapter_config.json names its base
and the base's revision); both load here. `trust_remote_code` stays off unless the stage config turns it on, and
weights are read from safetensors.
"""

from __future__ import annotations

import functools
import json
import os
import pkgutil
import struct
import traceback
from pathlib import Path

import torch
from accelerate import PartialState
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import get_quantization_config

from pipeline.common.config import UserError
from pipeline.common.precision import fp32_score_head


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_config(path: str | Path) -> dict:
    check_model_dir(path)
    return json.loads((Path(path) / "adapter_config.json").read_text())


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json")  # fmt: skip


def check_model_dir(path: str | Path) -> None:
    """A local model or adapter folder is whole, or a UserError names the file that is not: every JSON file
    parses, every safetensors file is as long as its header says, the weights (and each shard) are there.

    Stage outputs are published atomically, so this catches folders from elsewhere or damaged later, which
    from_pretrained would report as something else (a 0-byte adapter_config.json reads as "install sentencepiece").
    A hub id or a missing path is left to from_pretrained."""
    path = Path(path)
    if not path.is_dir():
        return

    def incomplete(why: str) -> UserError:
        return UserError(f"{path} is incomplete: {why} (was a run interrupted while writing it, or a file "
                         "copied only in part?). Rerun the stage that writes it, or copy the folder again.")  # fmt: skip

    if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise incomplete("it has neither config.json nor adapter_config.json")
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise incomplete(f"{file.name} is empty or not valid JSON") from None
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise incomplete(f"it holds no weights ({' or '.join(WEIGHT_FILES[:3])})")
    for index in (path / "model.safetensors.index.json", path / "pytorch_model.bin.index.json"):
        if index.is_file():
            missing = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())
                             - {p.name for p in path.iterdir()})  # fmt: skip
            if missing:
                raise incomplete(f"{index.name} lists shard(s) {', '.join(missing[:3])} that are not there")
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
            except ValueError:
                header = None
        ends = [v["data_offsets"][1] for k, v in (header or {}).items() if k != "__metadata__"]
        if header is None or 8 + n + max(ends, default=0) != size:
            raise incomplete(f"{file.name} is truncated or not a safetensors file ({size} bytes)")


def adapter_base_path(path: str | Path) -> str:
    return adapter_config(path)["base_model_name_or_path"]


def loading_error(name: str, err: Exception) -> UserError:
    hint = "Check the path or hub id"
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name).exists():
        hint = (
            "HF_HUB_OFFLINE=1 is set and it is not in the local cache: run with network access "
            "(make ... OFFLINE=0) or point to a local directory"
        )
    return UserError(f"Could not load '{name}': {type(err).__name__}: {err}. {hint}.")


def torch_dtype(name: str | None):
    if name in (None, "auto"):
        return name
    try:
        return getattr(torch, name)
    except AttributeError:
        raise UserError(
            f"dtype '{name}' is not a torch dtype (use float32, bfloat16, float16 or auto)."
        ) from None


def kbit_device_map() -> dict | str:
    """Quantized weights are placed at load time: on this process's GPU (one per rank), else on the CPU."""
    return {"": PartialState().local_process_index} if torch.cuda.is_available() else "cpu"


def pretrained_kwargs(model_args=None, trust_remote_code: bool = False, quantize: bool = True) -> dict:
    """`from_pretrained` keyword arguments from a `trl.ModelConfig`: revision, dtype, attention implementation,
    4/8-bit bitsandbytes quantization (with its device map) and trust_remote_code. `quantize=False` asks for
    full-precision weights whatever the config says (merging an adapter into its base)."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if model_args is None:
        return kwargs
    kwargs["revision"] = model_args.model_revision
    kwargs["dtype"] = torch_dtype(model_args.dtype)
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = get_quantization_config(model_args) if quantize else None
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = kbit_device_map()
    return {k: v for k, v in kwargs.items() if v is not None}


def is_quantized(model_args) -> bool:
    return bool(model_args is not None and (model_args.load_in_4bit or model_args.load_in_8bit))


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a model or adapter dir, with a pad token that is never silently missing."""
    check_model_dir(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise loading_error(name_or_path, err) from err
    if tokenizer.pad_token is None:  # common for Llama-family hub models; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_class, name_or_path: str, model_args=None, trust_remote_code: bool = False,
               quantize: bool = True, **kwargs):  # fmt: skip
    """`model_class.from_pretrained(name_or_path)` with `pretrained_kwargs`; `kwargs` add or override."""
    kwargs = {**pretrained_kwargs(model_args, trust_remote_code, quantize), **kwargs}
    check_model_dir(name_or_path)
    try:
        return model_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise loading_error(name_or_path, err) from err


def load_base_of(adapter_dir: str | Path, model_class, model_args=None, trust_remote_code: bool = False,
                 quantize: bool = True, **kwargs):  # fmt: skip
    """The base model an adapter was trained on, at the revision the adapter recorded (else the config's)."""
    recorded = adapter_config(adapter_dir).get("revision")
    if recorded:
        kwargs.setdefault("revision", recorded)
    return load_model(model_class, adapter_base_path(adapter_dir), model_args, trust_remote_code, quantize,
                      **kwargs)  # fmt: skip


def merge_adapter(model_class, adapter_dir: str | Path, model_args=None, trust_remote_code: bool = False,
                  base: str | None = None, **kwargs):  # fmt: skip
    """Base model in full precision + the saved adapter, merged into a plain model.

    The base is reloaded unquantized even after QLoRA: merging into 4-bit weights would round the update away.
    `base` overrides the base the adapter names (the reward stage trains on a locally prepared copy).
    """
    if base is None:
        base_model = load_base_of(
            adapter_dir, model_class, model_args, trust_remote_code, quantize=False, **kwargs
        )
    else:
        base_model = load_model(model_class, base, model_args, trust_remote_code, quantize=False, **kwargs)
    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()


def load_causal_lm(name_or_path: str, model_args=None, merge: bool = False, trust_remote_code: bool = False):
    """A causal LM from a plain dir, an adapter dir (base at its recorded revision + adapter) or a hub id."""
    if not is_adapter_dir(name_or_path):
        return load_model(AutoModelForCausalLM, name_or_path, model_args, trust_remote_code)
    base = load_base_of(name_or_path, AutoModelForCausalLM, model_args, trust_remote_code)
    model = PeftModel.from_pretrained(base, name_or_path)
    return model.merge_and_unload() if merge else model


def load_policy_for_inference(path: str, model_args, device, trust_remote_code: bool = False):
    """A policy to sample from and score with, never trained: adapters are merged (faster) unless the base is
    quantized. (PPO's `pipeline.ppo.models.load_policy` loads one to train.)"""
    quantized = is_quantized(model_args)
    model = load_causal_lm(path, model_args, merge=not quantized, trust_remote_code=trust_remote_code)
    if not quantized:
        model.to(device)
    return model.eval().requires_grad_(False)


def load_reward_model(name_or_path: str, model_args=None, trust_remote_code: bool = False):
    """A scalar-head reward model (AutoModelForSequenceClassification, num_labels=1)."""
    model = load_model(AutoModelForSequenceClassification, name_or_path, model_args, trust_remote_code,
                       num_labels=1)  # fmt: skip
    fp32_score_head(model)  # the score is fp32 whatever the trunk's dtype (pipeline.common.precision)
    if model.config.pad_token_id is None:
        raise UserError(
            f"Reward model {name_or_path} has no pad_token_id in its config; the score is read at the last "
            "non-pad token, so set config.pad_token_id (the reward stage does this when it saves)."
        )
    return model


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


def load_callable(spec: str, what: str):
    """`package.module:function` -> the function (reward functions, labelers)."""
    if ":" not in spec:
        raise UserError(f"{what} must look like 'package.module:function', got {spec!r}.")
    try:
        fn = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(
            f"{what} {spec!r} cannot be imported ({err}); use 'package.module:function'."
        ) from err
    if not callable(fn):
        raise UserError(f"{what} {spec!r} is not callable.")
    return fn


def load_scoring_function(spec: str, what: str):
    """The user's `module:function` f(prompts, responses) -> scores, called through `call_scorer`."""
    fn = load_callable(spec, what)
    return functools.partial(call_scorer, fn, spec, what)


def call_scorer(fn, spec: str, what: str, prompts: list[str], responses: list[str]) -> list[float]:
    """`fn(prompts, responses)` (a reward function or labeler the user names as `spec`), its failures made one
    line: an exception inside it, a wrong number of scores, or a score that is not a number. (A NaN is the caller's
    to judge: PPO stops on one with its own advice, a ranking refuses it by row.)"""
    try:
        scores = list(fn(prompts, responses))
    except Exception as err:  # the user's code: say where it failed, not our frames around it
        frame = traceback.extract_tb(err.__traceback__)[-1]
        raise UserError(
            f"{what} {spec} raised {type(err).__name__}: {err} (at {frame.filename}:{frame.lineno}, scoring "
            f"{len(prompts)} answers); fix the function, or set {what} to another one."
        ) from err
    if len(scores) != len(prompts):
        raise UserError(f"{what} {spec} returned {len(scores)} scores for {len(prompts)} responses; it must "
                        "return one number per response, in order.")  # fmt: skip
    try:
        return [float(s) for s in scores]
    except (TypeError, ValueError) as err:
        raise UserError(f"{what} {spec} returned a score that is not a number ({err}).") from None
