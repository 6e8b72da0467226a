"""Silence the library messages a user can do nothing about, narrowly, by message; installed on import of
`pipeline` (every stage script and `data_prep` import it first).

Each entry is a library's own noise, not ours to fix: bitsandbytes logs, at import, on CPUs with AVX512-BF16,
that it could not fetch an optional Hub kernel package (`kernels`), though its built-in CPU path works; DeepSpeed
(installed for the ZeRO configs) warns on every import without a GPU that it falls back to its CPU accelerator,
also when the stage does not use DeepSpeed at all; PEFT and TRL read transformers' deprecated
`is_gradient_checkpointing` property, which warns on every model they wrap.
Everything else, every other warning of the same libraries included, still shows.
"""

from __future__ import annotations

import logging
import warnings

NOISY_LOG_RECORDS = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "DeepSpeed": "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it",
}
NOISY_WARNINGS = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def install() -> None:
    for logger_name, prefix in NOISY_LOG_RECORDS.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
