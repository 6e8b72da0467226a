"""The seeds' steps 2 and 3, repeated: rounds that keep the reward model on the policy's own answers.

Round n, each step in `<output_dir>/<n>/`:
    collect     K answers per prompt from the round's policy (round 1: SFT; then the policy round n-1 ended with)
    rank        the labeler ranks them (or a person, or an imported file: `ranked.jsonl` either way)
    preference  every round's rankings so far as pairs (+ the recipe's own pairs), each round's held-out slice apart
    reward      the reward stage on those pairs, from the SFT model as always
    ppo         PPO against that reward model, from the previous round's policy (policy_init: previous; its
                critic too with value_head: shared; a value adapter starts afresh or from the round's reward model)
                or the SFT policy; the KL reference is always the SFT policy (grpo, rloo too when
                `methods` names them: each continues its own previous adapter)
    eval        every policy of the round evaluated with the round's reward model: `<n>/eval.json`
Then the table of rounds goes to `<run>/eval.json` (`rounds`) and `<output_dir>/report.md`.

The loop runs each training stage and the evaluation as its own process, under the launcher `make` gives it
(`accelerate launch ...` or python; collecting and ranking run in the loop's own process unless launched), and
skips what is finished: a killed loop continues at the stage it was in (a stage with checkpoints
resumes from its latest). What round 1 needs is built first when missing: the data, the base model (offline
recipes), the SFT policy.

    python -m pipeline.rounds --config recipes/tiny/rounds.yaml --rounds 2     # make rounds ROUNDS=2
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.analysis.rounds import round_record, write_rounds_report
from pipeline.common.config import ConfigError, UserError, parse_config, read_yaml
from pipeline.common.lock import one_writer
from pipeline.common.outputs import RUN_FILE, list_checkpoints, same_model_path, write_file_atomically
from pipeline.rounds import collect, rank
from pipeline.rounds.comparisons import COMPARISONS, RANKED, read_jsonl
from pipeline.rounds.config import CONFIG_TYPES, RoundsConfig
from pipeline.rounds.preference import build_preference, round_pairs


@dataclass
class LoopArguments:
    rounds: int = field(default=2, metadata={"help": "run rounds 1..N (make rounds ROUNDS=N)"})
    launch: str = field(
        default="",
        metadata={"help": "how a training stage starts: 'python -m' (default) or 'accelerate launch ... -m'"},
    )


class Recipe:
    """The recipe's stage configs, read for the paths the rounds use (each stage still parses its own)."""

    def __init__(self, rounds_yaml: Path):
        self.dir = rounds_yaml.parent
        self.rounds_yaml = rounds_yaml

    def file(self, stage: str) -> Path:
        return self.dir / f"{stage}.yaml"

    def get(self, stage: str, key: str, default=None):
        path = self.file(stage)
        return read_yaml(path).get(key, default) if path.is_file() else default


class Loop:
    def __init__(self, config: RoundsConfig, loop: LoopArguments, recipe: Recipe, passthrough: list[str]):
        self.config, self.recipe, self.passthrough = config, recipe, passthrough
        self.launch = shlex.split(loop.launch) if loop.launch else [sys.executable, "-m"]
        self.python = [sys.executable, "-m"]
        # launched as plain python (make's default): collecting needs no interpreter of its own
        self.single_process = (
            len(self.launch) == 2 and Path(self.launch[0]).resolve() == Path(sys.executable).resolve()
        )
        self.start = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[rounds {time.monotonic() - self.start:6.0f}s] {message}", flush=True)

    def run(self, what: str, command: list[str]) -> None:
        self.say(f"{what}: {shlex.join(command)}")
        code = subprocess.call(command)
        if code != 0:
            raise SystemExit(
                f"error: {what} failed (exit code {code}). Fix what it said above and run the same command again: "
                "the rounds continue from that stage."
            )

    def train(self, stage: str, output_dir: Path, overrides: list[str]) -> None:
        """A training stage into `output_dir`, unless it finished there; resumed when it left checkpoints."""
        if (output_dir / RUN_FILE).is_file():
            return
        resume = ["--resume_from_checkpoint", "latest"] if list_checkpoints(output_dir) else []
        module = "pipeline.ppo" if stage == "ppo" else f"pipeline.{stage}"
        self.run(f"{stage} -> {output_dir}", [*self.launch, module, "--config", str(self.recipe.file(stage)),
                                               "--output_dir", str(output_dir), *overrides, *resume])  # fmt: skip

    # --- what round 1 needs ------------------------------------------------------------------------------
    def prepare(self) -> None:
        if not Path(self.config.prompts_path).exists():
            self.run("data", [*self.python, "data_prep", "build", "--config", str(self.recipe.file("data"))])
        base = self.recipe.get("base", "output_dir")
        if base and not (Path(base) / RUN_FILE).is_file():
            self.run("base", [*self.python, "pipeline.base", "--config", str(self.recipe.file("base"))])
        sft = Path(self.config.sft_model_path)
        ppo_sft = self.recipe.get("ppo", "sft_model_path")
        if ppo_sft and not same_model_path(ppo_sft, str(sft)):
            raise ConfigError(f"{self.recipe.rounds_yaml}: sft_model_path {sft} differs from ppo.yaml's {ppo_sft}; "
                              "the rounds and PPO must share one SFT policy (the KL reference).")  # fmt: skip
        ppo = (self.recipe.get("ppo", "response_length"), self.recipe.get("ppo", "temperature"))
        if ppo[0] is not None and ppo != (self.config.max_new_tokens, self.config.temperature):
            self.say(f"Warning: rounds.yaml samples max_new_tokens {self.config.max_new_tokens} at temperature "
                     f"{self.config.temperature}, ppo.yaml response_length {ppo[0]} at {ppo[1]}: the raters then rank "
                     "answers PPO would not write. Set them alike unless you mean it.")  # fmt: skip
        self.train("sft", sft, [])

    # --- one round ---------------------------------------------------------------------------------------
    def round(self, n: int) -> bool:
        """Run round n's missing steps; False when it waits for rankings (no labeler)."""
        config, folder = self.config, self.config.round_dir(n)
        step = [*self.passthrough, "--round", str(n)]
        if not (folder / COMPARISONS).exists():
            if self.single_process:  # sample here, not in a new interpreter (~6 s a round)
                self.say(f"round {n} collect")
                collect.main(step)
            else:
                self.run(f"round {n} collect", [*self.launch, "pipeline.rounds.collect", *step])
        if not (folder / RANKED).exists():
            if not config.labeler:
                self.say(f"Round {n}'s comparisons are in {folder / COMPARISONS}. Rank them in the browser (make "
                         f"label ROUND={n}) or in any tool (make rank ROUND={n} FROM=file), then make rank ROUND={n} "
                         "and run the rounds again to go on.")  # fmt: skip
                return False
            self.say(f"round {n} rank")
            rank.main(step)
        if not (folder / "preference").exists():
            build_preference(config, n)
        self.train("reward", folder / "reward", ["--dataset_path", str(folder / "preference")])
        for method in config.methods:
            overrides = ["--reward_model_path", str(folder / "reward")]
            if method == "ppo" and config.ppo_total_episodes:
                overrides += ["--total_episodes", str(config.ppo_total_episodes)]
            if n > 1 and config.policy_init == "previous":
                previous = str(config.round_dir(n - 1) / method)
                overrides += ["--init_policy_path" if method == "ppo" else "--init_adapter_path", previous]
            self.train(method, folder / method, overrides)
        if not all(
            (folder / name).exists() for name in ("eval.json", "report.md")
        ):  # report.md is written last
            run_dir = self.recipe.get("eval", "run_dir")
            eval_prompts = (config.eval_prompts_path or self.recipe.get("eval", "eval_prompts_path")
                            or str(Path(run_dir) / "data" / "eval_prompts"))  # fmt: skip
            self.run(f"round {n} eval", [*self.launch, "pipeline.evaluate", "--config", str(self.recipe.file("eval")),
                                         "--run_dir", str(folder), "--sft_model_path", config.sft_model_path,
                                         "--ppo_model_path", str(folder / "ppo"),
                                         "--reward_model_path", str(folder / "reward"),
                                         "--eval_prompts_path", eval_prompts,
                                         "--preference_path", str(folder / "preference")])  # fmt: skip
        return True

    # --- the table ---------------------------------------------------------------------------------------
    def summarize(self, last: int) -> list[dict]:
        rounds = []
        for n in range(1, last + 1):
            folder = self.config.round_dir(n)
            if not (folder / "eval.json").exists():
                break
            evaluation = json.loads((folder / "eval.json").read_text())
            reward = json.loads((folder / "reward" / "eval_results.json").read_text())
            comparisons = len(read_jsonl(folder / COMPARISONS, "Comparisons file"))
            pairs = sum(map(len, round_pairs(folder / RANKED, self.config.heldout_fraction)))
            summary = folder / rank.SUMMARY  # who ranked (rounds ranked before the summary existed: none)
            ranked_by = json.loads(summary.read_text()) if summary.exists() else None
            rounds.append(
                round_record(n, evaluation, reward, comparisons, pairs, self.config.methods[0], ranked_by)
            )
        return rounds

    def publish(self, rounds: list[dict]) -> None:
        """`rounds` into the run's eval.json (kept whole otherwise: `make all`'s figures stay as they were; a run
        evaluated only in rounds gets the last round's evaluation) and the rounds report."""
        run_dir = Path(self.recipe.get("eval", "run_dir"))
        path = run_dir / "eval.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        if not result or result.get("source") == "rounds":
            last = rounds[-1]["round"]
            result = {**json.loads((self.config.round_dir(last) / "eval.json").read_text()), "source": "rounds",
                      "source_round": last}  # fmt: skip
        result["rounds"] = rounds
        write_file_atomically(path, json.dumps(result, indent=2) + "\n")
        report = write_rounds_report(Path(self.config.output_dir), rounds)
        self.say(f"eval.json: {path} (rounds); report: {report}")
        for r in rounds:
            own = r["rm_accuracy_on_own_samples"]
            labeler = r["labeler_score"]
            self.say(f"  round {r['round']}: {r['comparisons']} comparisons, RM accuracy {r['reward_model_accuracy']:.3f} "
                     f"held-out, {'-' if own is None else f'{own:.3f}'} on the policy's own answers; labeler "
                     f"{'-' if labeler is None else f'{labeler:.3f}'}, KL {r['kl_from_sft']:.2f}")  # fmt: skip


def main(args=None):
    args = list(sys.argv[1:] if args is None else args)
    config, _, loop = parse_config((*CONFIG_TYPES, LoopArguments), args)
    if "--config" not in args:
        raise UserError("Pass the recipe's rounds file: --config recipes/<name>/rounds.yaml.")
    recipe = Recipe(Path(args[args.index("--config") + 1]))
    passthrough = _without(args, ("--rounds", "--launch", "--round"))
    if config.methods[0] != "ppo":
        raise ConfigError(f"methods {config.methods}: the round's policy is PPO's; list ppo first.")
    if loop.rounds < 1:
        raise ConfigError("rounds must be at least 1.")
    runner = Loop(config, loop, recipe, passthrough)
    with one_writer(config.output_dir, "rounds"):  # one loop at a time; each stage locks its own folder too
        runner.prepare()
        done = 0
        for n in range(1, loop.rounds + 1):
            if not runner.round(n):
                break
            done = n
            runner.publish(runner.summarize(done))
    return done


def _without(args: list[str], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
