"""The InstructGPT recipe as stage scripts: base (built-in task only), sft, reward, ppo, evaluate, push."""

from pipeline.common import quiet

quiet.install()
