"""Offline hygiene: hub ids still go through the real from_pretrained path and fail clearly without a network."""

from __future__ import annotations

import os

import pytest

from pipeline.config import UserError
from pipeline.models import load_causal_lm, load_reward_model, load_tokenizer


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
