"""What every push to the Hub checks first (model stages: push.py; a round's data: rounds/push_data.py)."""

from __future__ import annotations

from huggingface_hub import constants, get_token

from pipeline.common.config import UserError


def push_token(target: str) -> str:
    """The token to push with (HF_TOKEN, or the one `hf auth login` saved; never printed), once the Hub is reachable
    in principle: a one-line error when offline mode is on or there is no token. `target`: the make target."""
    if constants.is_offline_mode():
        raise UserError(
            f"HF_HUB_OFFLINE=1 is set and pushing needs the Hub: unset it (make {target} ... OFFLINE=0)."
        )
    token = get_token()
    if not token:
        raise UserError(
            "No Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)."
        )
    return token
