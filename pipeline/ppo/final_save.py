"""The finished run's output folder: the policy adapter and tokenizer at the root, the value head (and value
adapter), a plain merged policy in merged/, the run's logs and records.

Written to `<output_dir>.tmp` and renamed (`pipeline.common.outputs.publish`), so output_dir always holds either
the previous policy or the new one, never half of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from pipeline.common import outputs, tracking
from pipeline.common.models import load_base_of
from pipeline.common.training import local_loading_from_now_on
from pipeline.ppo.checkpoint import LOG_FILES
from pipeline.ppo.models import POLICY, VALUE


def save_final(
    accelerator, model, tokenizer, args, run_identity: dict, tracker_identity: dict | None, sharded: bool
) -> None:
    """Collective: every rank calls it (sharded weights are gathered), the main process writes.

    `model` is the prepared policy; `tracker_identity` the tracker run (with its last step) that evaluation adds
    its figures to, or None."""
    acc = accelerator
    output_dir = Path(args.output_dir)
    work_dir = outputs.checkpoints_dir(output_dir)
    tmp = outputs.staging_dir(output_dir, acc.is_main_process)
    acc.wait_for_everyone()
    policy = acc.unwrap_model(model)
    # Sharded weights (FSDP, ZeRO-3) are gathered into one full state dict: a collective, every rank joins.
    full_state = acc.get_state_dict(model) if sharded else policy.state_dict()
    local_loading_from_now_on()  # the merged model below is loaded on the main process alone
    if acc.is_main_process:
        retie_shared(full_state, policy)
        lm = policy.lm
        lm_state = submodule_state(full_state, "lm")
        if hasattr(lm, "peft_config"):
            lm.save_pretrained(tmp, selected_adapters=[POLICY], state_dict=lm_state)
            if policy.value_adapter:  # peft writes it to tmp/value/
                lm.save_pretrained(tmp, selected_adapters=[VALUE], state_dict=lm_state)
        else:
            lm.save_pretrained(tmp, state_dict=lm_state)
        value_head = submodule_state(full_state, "value_head")
        save_file({k: v.detach().cpu().contiguous() for k, v in value_head.items()},
                  str(tmp / "value_head.safetensors"))  # fmt: skip
        tokenizer.save_pretrained(tmp)
        if args.save_merged:
            save_merged(lm, lm_state, tmp, tokenizer, args.trust_remote_code)
        for name in LOG_FILES:
            if (work_dir / name).is_file():
                shutil.copy2(work_dir / name, tmp / name)
        if tracker_identity:
            tracking.write_identity(tmp / tracking.IDENTITY_FILE, tracker_identity)
        outputs.write_run(tmp, run_identity)
        outputs.publish(tmp, output_dir)
        print(f"Saved the PPO policy to {output_dir}")
    acc.wait_for_everyone()


def save_merged(lm, lm_state: dict, out: Path, tokenizer, trust_remote_code: bool) -> None:
    """`out/merged`: the plain policy, the adapter already saved in `out` merged into its base."""
    merged_dir = out / "merged"
    if not hasattr(lm, "peft_config"):
        lm.save_pretrained(merged_dir, state_dict=lm_state)
    else:
        # Merge into a fresh full-precision copy of the base: merging into a 4-bit base would be lossy, and
        # the training model still carries the reference and value adapters.
        trained = lm.get_base_model()
        dtype = torch.bfloat16 if getattr(trained, "is_loaded_in_4bit", False) else trained.dtype
        base = load_base_of(out, AutoModelForCausalLM, None, trust_remote_code, dtype=dtype)
        merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
        merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)


def retie_shared(state: dict, model: torch.nn.Module) -> None:
    """Names that share one parameter (tied embeddings) share one tensor again, so save_pretrained writes it once.

    A gathered state dict (FSDP, ZeRO-3) holds a separate copy under each name; `model.state_dict()` does not.
    """
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in state:
            state[name] = state[first_name.setdefault(id(param), name)]


def submodule_state(state: dict, name: str) -> dict:
    """The entries of a model's state dict under submodule `name`, keyed as the submodule's own state dict."""
    prefix = f"{name}."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
