"""Where PPO's models live under each Accelerate engine: DDP (replicated), DeepSpeed ZeRO and FSDP2 (sharded).

Follows TRL's own online trainers (GRPO): the frozen reference model is sharded like the policy (ZeRO-3 /
FSDP2); the reward model is sharded under DeepSpeed and replicated otherwise. With sharded weights every rank
must run the same forward passes, so generation keeps all ranks decoding until the last one finishes. DeepSpeed
takes its batch sizes and gradient clipping from the PPO config.
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.fsdp import register_fsdp_forward_method
from transformers import Trainer
from trl.models.utils import prepare_deepspeed, prepare_fsdp

from pipeline.common.config import UserError
from pipeline.common.training import is_sharded


def synced_generation(accelerator) -> bool | None:
    """`synced_gpus` for generate(): True with sharded weights on several ranks, else transformers' default."""
    return True if is_sharded(accelerator) and accelerator.num_processes > 1 else None


def check_supported(accelerator) -> None:
    fsdp = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type == DistributedType.FSDP and fsdp is not None and fsdp.fsdp_version != 2:
        raise UserError(
            "PPO supports FSDP version 2 only (its forward passes and adapter switching run on the unwrapped "
            "model, which FSDP1 flattens). Set `fsdp_version: 2` in the Accelerate config "
            "(recipes/accelerate/fsdp.yaml does)."
        )


def configure_engine(accelerator, args) -> None:
    """Fill the DeepSpeed config's "auto" batch sizes, accumulation and gradient clipping from the PPO config, as
    transformers' Trainer does for its stages; refuse values that disagree. Accelerate would read the batch size
    off a dataloader (PPO's batches come from rollouts) and clip at 1.0 whatever max_grad_norm says. A no-op for
    any other engine."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    wanted = {  # DeepSpeed key: (PPO's value, where it comes from)
        "train_micro_batch_size_per_gpu": (micro, "per_device_train_batch_size"),
        "gradient_accumulation_steps": (accumulation, "gradient_accumulation_steps"),
        "train_batch_size": (
            micro * accumulation * accelerator.num_processes,
            "per_device_train_batch_size x gradient_accumulation_steps x processes",
        ),
        "gradient_clipping": (args.max_grad_norm, "max_grad_norm"),
    }
    config = accelerator.state.deepspeed_plugin.deepspeed_config  # the four keys are all top-level
    mismatches = []
    for key, (value, source) in wanted.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif config[key] != value:
            mismatches.append(
                f"  {key} is {config[key]} in the DeepSpeed config; PPO's {source} gives {value}"
            )
    if mismatches:
        fix = 'Set these to "auto" in the DeepSpeed config (PPO fills them in) or change the PPO config to match.'
        raise UserError(
            "The DeepSpeed config disagrees with the PPO config:\n" + "\n".join([*mismatches, fix])
        )


def build_optimizer(params: list[nn.Parameter], args, accelerator) -> torch.optim.Optimizer:
    """The optimizer `args.optim` names (transformers' own table: adamw_torch, adamw_torch_fused, adafactor,
    sgd, ...), with the PPO config's lr, betas, eps and weight decay, under every engine.

    When ZeRO offloads the optimizer, Accelerate swaps a torch optimizer for DeepSpeed's CPU Adam and keeps only
    its lr and weight decay, so PPO's `adam_epsilon` (1e-5) silently became DeepSpeed's default 1e-8. Keep our own
    optimizer instead (`zero_force_ds_cpu_optimizer` off): DeepSpeed then steps it on the offloaded state, with the
    same arithmetic as under every other engine. (DeepSpeed's CPU Adam is faster on big models, but its SIMD
    arithmetic moved these weights by up to 7e-5 from DDP's over 8 steps: not a drop-in replacement.)"""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        offload = config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        if offload not in (None, "none"):
            config["zero_force_ds_cpu_optimizer"] = False
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return optimizer_cls(params, weight_decay=args.weight_decay, **kwargs)


def describe_optimizer(optimizer) -> str:
    """The optimizer that really steps (under the engines' wrappers) and its settings, for the startup log."""
    while hasattr(optimizer, "optimizer"):  # Accelerate's wrapper, DeepSpeed's ZeRO optimizer
        optimizer = optimizer.optimizer
    group = optimizer.param_groups[0]
    return (
        f"{type(optimizer).__name__} (lr {group['lr']:g}, betas {tuple(group['betas'])}, eps {group['eps']:g}, "
        f"weight decay {group['weight_decay']:g})"
    )


def register_generate(model: nn.Module) -> None:
    """Under FSDP2, run the policy's `generate` between the pre- and post-forward hooks that `forward` gets.

    FSDP2 gathers a module's sharded weights only around `forward`; a generate() called on a submodule would meet
    the root's weights still sharded. Same fix as transformers' Trainer; a no-op for any other engine.
    """
    register_fsdp_forward_method(model, "generate")


def place_reference(model: nn.Module, accelerator) -> nn.Module:
    """The frozen reference model of full fine-tuning, sharded like the policy under ZeRO-3 / FSDP2."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return prepare_deepspeed(model, accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        return prepare_fsdp(model, accelerator)
    return model.to(accelerator.device)


def place_reward_model(model: nn.Module, accelerator) -> nn.Module:
    """The frozen reward model: a DeepSpeed inference engine under DeepSpeed, replicated on each device otherwise."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return prepare_deepspeed(model, accelerator)
    return model
