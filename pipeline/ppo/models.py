"""The models PPO needs, on as little memory as possible.

With LoRA (the default) ONE frozen base model serves every role:
    policy     adapter "default", initialised from the SFT adapter (or fresh LoRA when the SFT is a plain model)
    reference  adapter "ref", a frozen copy of the SFT adapter; or, when the SFT is a plain model, the base
               itself with adapters disabled (it *is* the SFT model then)
    value      a scalar head on the policy's last hidden state ("shared": one forward gives logits and values),
               or on a separate trainable adapter "value" ("adapter"), initialised from the reward model's
               LoRA adapter when it was trained on the same base (InstructGPT initialises V from the RM)
The reward model is separate (`pipeline.lm.scoring.RewardScorer`): it may have another tokenizer, or be a function.
Full fine-tuning keeps a frozen copy of the SFT model as reference and supports the shared value head.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM
from trl.trainer.utils import disable_dropout_in_model, get_peft_config

from pipeline.common.config import UserError
from pipeline.common.models import (
    adapter_base_path,
    is_adapter_dir,
    load_base_of,
    load_model,
)
from pipeline.common.outputs import same_model_path
from pipeline.common.precision import fp32_head
from pipeline.lm.logprobs import response_logits, response_logprobs
from pipeline.lm.packing import check_packed_responses, position_ids_from_mask

logger = logging.getLogger(__name__)

POLICY, REF, VALUE = "default", "ref", "value"


class PolicyWithValueHead(nn.Module):
    """Two-headed policy: the causal LM (its LM head) and a scalar value head.

    `forward` returns response logits and values for a batch of query+response sequences, computing the vocab
    projection only for the response positions (`logits_to_keep`): the big-vocabulary tensor is never built for
    the prompt.
    """

    def __init__(self, lm: nn.Module, value_head: nn.Linear, value_adapter: bool, ref_adapter: bool):
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        self.value_adapter = value_adapter
        self.ref_adapter = ref_adapter
        self.trainable_adapters = [POLICY, VALUE] if value_adapter else [POLICY]
        self.packing = False  # forward on the batch's real tokens packed into rows (PPOConfig.packing)

    def generate(self, **kwargs) -> torch.Tensor:
        """Sample from the LM head. A method of the root module, not a call to `self.lm.generate`, so that under
        FSDP2 the root's forward hooks run around it (`distributed.register_generate`): they set FSDP up on first
        use and gather the weights the root unit holds itself (the final norm, the value head)."""
        return self.lm.generate(**kwargs)

    def transformers_model(self) -> nn.Module:
        """The transformers causal LM under the peft wrapper (the LM itself under full fine-tuning)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    # --- what Accelerate's engines read off a transformers model --------------------------------------------
    @property
    def config(self):
        """DeepSpeed fills its "auto" bucket sizes from config.hidden_size."""
        return self.lm.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """FSDP's transformer auto-wrap shards each decoder layer on its own (not the whole model as one unit)."""
        return getattr(self.transformers_model(), "_no_split_modules", None)

    # Accelerate's FSDP2 prepare moves the model to the meta device and back, which unties tied embeddings unless
    # it can call tie_weights(); it also gives the embeddings and LM head their own shard unit when it finds them.
    def tie_weights(self, *args, **kwargs) -> None:
        self.transformers_model().tie_weights(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.transformers_model().get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.transformers_model().get_output_embeddings()

    # --- what trl's unwrap_model_for_generation expects of a model (it turns checkpointing off to generate) --
    @property
    def is_gradient_checkpointing(self) -> bool:
        model = self.transformers_model()
        if hasattr(type(model), "is_activation_checkpointing"):  # transformers >= 5.2x renamed it
            return bool(model.is_activation_checkpointing)
        return bool(getattr(model, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        # A checkpointed block recomputes its forward during backward, by which time another adapter is active (the
        # value pass runs under the value adapter, backward under the policy's): it must recompute under the adapter
        # it ran with, or its gradients are another adapter's. torch's context_fn does that; it needs the
        # non-reentrant checkpoint, which this forces.
        kwargs = {**(gradient_checkpointing_kwargs or {}), "use_reentrant": False}
        self.lm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={**kwargs, "context_fn": self._checkpoint_contexts}
        )

    def _checkpoint_contexts(self):
        """(forward context, recompute context) of one checkpointed block: recompute under the active adapter."""
        adapter = getattr(self.lm, "active_adapter", None) if isinstance(self.lm, PeftModel) else None
        return nullcontext(), (self._active_adapter(adapter) if adapter is not None else nullcontext())

    # --- adapter switching -----------------------------------------------------------------------------------
    @contextmanager
    def _active_adapter(self, name: str) -> Iterator[None]:
        """`name` answers the forward passes within; peft's set_adapter() freezes every other adapter (and makes
        the active one trainable), so the adapters that train are made trainable again, by peft, each time."""
        self.lm.set_adapter(name, inference_mode=name not in self.trainable_adapters)
        self.lm.set_requires_grad(self.trainable_adapters, requires_grad=True)
        try:
            yield
        finally:
            self.lm.set_adapter(POLICY)
            self.lm.set_requires_grad(self.trainable_adapters, requires_grad=True)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context `self.lm` is the reference (SFT) policy."""
        if self.ref_adapter:
            with self._active_adapter(REF):
                yield
        elif hasattr(self.lm, "disable_adapter"):
            with self.lm.disable_adapter():
                yield
        else:  # full fine-tuning: the caller uses its frozen copy
            raise RuntimeError("reference() is only for LoRA policies")

    # --- forward ---------------------------------------------------------------------------------------------
    def backbone(self) -> nn.Module:
        model = self.transformers_model()
        return getattr(model, model.base_model_prefix)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        with_values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits predicting each response token and the value of the state before it: (B, R, V), (B, R)."""
        out = response_logits(self.lm, input_ids, attention_mask, response_length, packed=self.packing,
                              output_hidden_states=with_values and not self.value_adapter)  # fmt: skip
        logits = out.logits
        if not with_values:
            return logits, None
        if self.value_adapter:
            with self._active_adapter(VALUE):
                hidden = self.backbone()(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                    use_cache=False,
                ).last_hidden_state
        else:
            hidden = out.hidden_states[-1]
        values = self.value_head(hidden[:, -response_length - 1 : -1]).squeeze(-1)  # fp32 (FP32Linear)
        return logits, values

    def check_packing(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> bool:
        """Do packed forwards give these rows' padded logits? If not, packing goes off for good (False)."""

        def logits(packed: bool) -> torch.Tensor:
            previous, self.packing = self.packing, packed
            try:
                return self(input_ids, attention_mask, response_mask.shape[1], with_values=False)[0]
            finally:
                self.packing = previous

        if check_packed_responses(logits, response_mask):
            return True
        self.packing = False
        return False


@torch.no_grad()
def reference_logprobs(
    policy: PolicyWithValueHead,
    ref_model: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    responses: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """log pi_ref of each response token (B, R) under the reference (SFT) policy, the KL penalty's other side.

    `policy` is the unwrapped policy; `ref_model` the frozen copy of full fine-tuning, None under LoRA."""
    response_length = responses.shape[1]
    if (
        ref_model is not None
    ):  # full fine-tuning: the frozen SFT copy, packed as the policy is (off if its check failed)
        logits = response_logits(
            ref_model, input_ids, attention_mask, response_length, packed=policy.packing
        ).logits
    else:  # LoRA: the same base with the reference adapter (or no adapter)
        with policy.reference():
            logits, _ = policy(input_ids, attention_mask, response_length, with_values=False)
    return response_logprobs(logits, responses, temperature)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere, so the training forward computes the log-probs the rollout forward computed.

    TRL's disable_dropout_in_model zeroes nn.Dropout modules only, but several architectures call the functional
    dropout with a rate kept as a float attribute: OPT's `dropout` (0.1 in its configs) and `layerdrop`, the
    `attention_dropout` of most attention modules.
    """
    disable_dropout_in_model(model)
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, float) and ("dropout" in name or name == "layerdrop"):
                setattr(module, name, 0.0)


def load_policy(args, model_args) -> tuple[PolicyWithValueHead, nn.Module | None]:
    """Build the two-headed policy (and, for full fine-tuning only, a frozen reference model)."""
    sft = args.sft_model_path
    if not Path(sft).exists():
        raise UserError(
            f"sft_model_path {sft} does not exist. Run the SFT stage first (make sft) or fix the path."
        )
    sft_is_adapter = is_adapter_dir(sft)
    use_lora = model_args.use_peft or sft_is_adapter
    if sft_is_adapter and not model_args.use_peft:
        logger.info("sft_model_path is a LoRA adapter: the policy continues it with LoRA (for full fine-tuning "
                    "point sft_model_path at the merged SFT model).")  # fmt: skip
    base_path = adapter_base_path(sft) if sft_is_adapter else sft
    remote_code = args.trust_remote_code

    def load_base():  # at the revision the SFT adapter recorded; a plain SFT model is a local dir
        if sft_is_adapter:
            return load_base_of(sft, AutoModelForCausalLM, model_args, remote_code)
        return load_model(AutoModelForCausalLM, sft, model_args, remote_code)

    init = args.init_policy_path  # the policy's start when not the SFT policy (a previous round's)
    if init:
        check_init_policy(init, sft, base_path, use_lora)
    base = (
        load_base()
        if use_lora or not init
        else load_model(AutoModelForCausalLM, init, model_args, remote_code)
    )
    quantized = getattr(base, "is_quantized", False)
    if quantized:  # (activation checkpointing is switched on below, on the policy)
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)

    ref_model = None
    if not use_lora:
        if args.value_head == "adapter":
            raise UserError(
                "value_head: adapter needs LoRA (use_peft: true); full fine-tuning uses value_head: shared."
            )
        if quantized:
            raise UserError("A 4-bit base cannot be fully fine-tuned; set use_peft: true (QLoRA).")
        lm = base
        ref_model = load_base().eval().requires_grad_(False)
        disable_dropout(ref_model)
    elif sft_is_adapter:
        lm = PeftModel.from_pretrained(base, init or sft, adapter_name=POLICY, is_trainable=True)
        lm.load_adapter(sft, adapter_name=REF, is_trainable=False)
    elif init:  # a plain SFT model: the reference is the base, adapters off; the policy the given adapter
        lm = PeftModel.from_pretrained(base, init, adapter_name=POLICY, is_trainable=True)
    else:
        lm = get_peft_model(
            base, get_peft_config(model_args) or LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM")
        )
    value_head = fp32_head(nn.Linear(base.config.hidden_size, 1))  # fp32 from a bf16 trunk
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    earlier_head = Path(init or "") / "value_head.safetensors"
    if (
        init and args.value_head == "shared" and earlier_head.is_file()
    ):  # the earlier policy's critic goes on too
        value_head.load_state_dict({k: v.float() for k, v in load_file(str(earlier_head)).items()})
    if use_lora and args.value_head == "adapter":
        _add_value_adapter(lm, args, value_head, base_path)
    disable_dropout(lm)  # N+ details: dropout would make logprobs differ between rollout and training
    model = PolicyWithValueHead(
        lm, value_head, value_adapter=args.value_head == "adapter", ref_adapter=sft_is_adapter
    )
    if use_lora:  # the policy (and value) adapters train; the reference adapter and the base stay frozen
        lm.set_adapter(POLICY)
        lm.set_requires_grad(model.trainable_adapters, requires_grad=True)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable()
    return model, ref_model


def check_init_policy(init: str, sft: str, base_path: str, use_lora: bool) -> None:
    """The policy may start from an earlier run's policy only if it is one on the same base as the SFT policy."""
    if not Path(init).exists():
        raise UserError(f"init_policy_path {init} does not exist (the policy an earlier round ended with?).")
    if use_lora != is_adapter_dir(init):
        kind = "a LoRA adapter" if is_adapter_dir(init) else "a plain model"
        raise UserError(f"init_policy_path {init} is {kind}, but this run trains "
                        f"{'LoRA' if use_lora else 'the full model'}: start from a policy trained the same way.")  # fmt: skip
    if use_lora and not same_model_path(adapter_base_path(init), base_path):
        raise UserError(f"init_policy_path {init} is an adapter on {adapter_base_path(init)}, not on the SFT policy's "
                        f"base {base_path} ({sft}): it must come from a PPO run on this SFT model.")  # fmt: skip


def _add_value_adapter(lm, args, value_head: nn.Linear, base_path: str) -> None:
    """A trainable value adapter; initialised from the reward model's LoRA adapter when trained on our base."""
    policy_config = lm.peft_config[POLICY]
    reward_adapter = Path(args.reward_model_path or "") / "adapter"
    if (
        args.reward_model_path
        and is_adapter_dir(reward_adapter)
        and same_model_path(adapter_base_path(reward_adapter), base_path)
    ):
        reward_config = json.loads((reward_adapter / "adapter_config.json").read_text())
        config = LoraConfig(
            r=reward_config["r"],
            lora_alpha=reward_config["lora_alpha"],
            target_modules=reward_config["target_modules"],
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        lm.add_adapter(VALUE, config)
        state = load_file(str(reward_adapter / "adapter_model.safetensors"))
        lora_state = {k: v for k, v in state.items() if "lora_" in k}
        set_peft_model_state_dict(lm, lora_state, adapter_name=VALUE)
        score = {k: v for k, v in state.items() if k.endswith("score.weight")}
        if score:
            with torch.no_grad():
                value_head.weight.copy_(next(iter(score.values())).float().view_as(value_head.weight))
        logger.info("value adapter initialised from the reward model adapter %s", reward_adapter)
    else:
        logger.info(
            "value adapter initialised fresh (no reward-model adapter on the same base at %s)", reward_adapter
        )
        lm.add_adapter(
            VALUE,
            LoraConfig(
                r=policy_config.r,
                lora_alpha=policy_config.lora_alpha,
                target_modules=policy_config.target_modules,
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
            ),
        )
