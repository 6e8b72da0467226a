"""Offline hygiene: hub ids still go through the real from_pretrained path and fail clearly without a network."""

from __future__ import annotations

import os

import pytest

from pipeline.common.config import UserError
from pipeline.common.models import load_causal_lm, load_reward_model, load_tokenizer


def test_tests_run_offline_without_telemetry():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm, load_reward_model])
def test_real_hub_id_fails_with_a_clear_offline_error(loader):
    with pytest.raises(UserError) as err:
        loader("Qwen/Qwen2.5-0.5B-Instruct")
    message = str(err.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in message and "HF_HUB_OFFLINE=1" in message


def test_missing_local_dir_names_the_path(tmp_path):
    with pytest.raises(UserError, match="nope"):
        load_causal_lm(str(tmp_path / "nope"))


def test_library_noise_is_filtered_by_message_only():
    """`import pipeline` drops the few library messages a user can do nothing about (pipeline/common/quiet.py), and only
    those: another record of the same logger, and other FutureWarnings, still come through."""
    import logging
    import warnings

    import pipeline  # noqa: F401  (installs the filters)
    from pipeline.common.quiet import NOISY_LOG_RECORDS

    for name, prefix in NOISY_LOG_RECORDS.items():
        logger = logging.getLogger(name)
        kept = []
        handler = logging.Handler()
        handler.emit = kept.append
        logger.addHandler(handler)
        try:
            logger.warning(prefix + ": No module named 'kernels'")
            logger.warning("Something the user should see")
        finally:
            logger.removeHandler(handler)
        assert [r.getMessage() for r in kept] == ["Something the user should see"], name

    import transformers

    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1
        )  # fmt: skip
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import pipeline.common.quiet

        pipeline.common.quiet.install()  # after simplefilter, as at the start of every stage
        assert model.is_gradient_checkpointing is False
        warnings.warn("`some_option` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`some_option` is deprecated"]
