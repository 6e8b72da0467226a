"""The one rule for what counts as a secret, used by run records (run.json), tracker configs, model cards and the
command line a tracker keeps: a key that names a credential, or a value that holds a token from the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys

# Keys ending in one of these words (hub_token, wandb_api_key, ...); `max_new_tokens` and `pad_token_id` are not.
SECRET_KEY = re.compile(r"(token|api_key|apikey|secret|password)$", re.IGNORECASE)
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "TRACKIO_WRITE_TOKEN")


def known_secrets() -> list[str]:
    """The values of the credential variables set in this environment."""
    return [os.environ[v] for v in SECRET_ENV if os.environ.get(v)]


def is_secret(key: str, value=None, known: list[str] | None = None) -> bool:
    """A private field (`_x`), a key that names a credential, or a value holding a credential from the environment."""
    known = known_secrets() if known is None else known
    return key.startswith("_") or bool(SECRET_KEY.search(key)) or any(s in str(value) for s in known)


def public_items(*configs) -> dict:
    """The configs (dataclasses or objects with `to_dict`) as one flat dict of their public fields, values as they
    round-trip through JSON (a tuple becomes a list, anything else not JSON becomes its str)."""
    known, out = known_secrets(), {}
    for config in configs:
        items = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
        for key, value in items.items():
            if not is_secret(key, value, known):
                out[key] = json.loads(json.dumps(value, default=str))
    return out


@contextlib.contextmanager
def argv_without_secrets():
    """sys.argv with every credential replaced by <redacted> (`--hub_token X`, `--hub_token=X`, or a known value),
    for libraries that record the command line (W&B)."""
    known = known_secrets()
    saved, redact = sys.argv, False
    argv = []
    for arg in saved:
        flag = arg.split("=", 1)[0].lstrip("-")
        secret = (
            redact
            or any(s in arg for s in known)
            or (arg.startswith("-") and "=" in arg and SECRET_KEY.search(flag))
        )
        argv.append("<redacted>" if secret else arg)
        redact = arg.startswith("-") and "=" not in arg and bool(SECRET_KEY.search(flag))
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
