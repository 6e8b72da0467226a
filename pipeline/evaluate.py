"""Evaluate a finished run: the SFT policy, the PPO policy and every alternative stage-3 policy present in the run
(GRPO, RLOO, DPO: `make compare`) on the same held-out prompts, and the reward model on held-out pairs.

Every policy samples with the same settings and seed; the answers are scored by the reward model (which may
use another tokenizer: texts are decoded and re-encoded) and, on the built-in task, by the programmatic labeler.
Each policy's KL from the SFT policy is estimated on its own samples (k1: mean over prompts of the sum over
response tokens of log pi - log pi_sft, both at the sampling temperature, as the PPO stage logs it).
Writes `eval.json` (`policies.<stage>`: every policy's record, the leaderboard; pipeline/analysis/summary.py),
`eval_samples.jsonl`, `report.md` and `plots/*.png` (pipeline/analysis/report.py) to the run directory.

    python -m pipeline.evaluate --config recipes/tiny/eval.yaml
    accelerate launch --config_file ... -m pipeline.evaluate --config ...   # prompts sharded across processes
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import DatasetDict
from transformers import set_seed
from trl import ModelConfig

from pipeline.analysis.report import write_report
from pipeline.analysis.summary import own_sample_pairs, summarize
from pipeline.common import tracking
from pipeline.common.config import ConfigError, UserError, nulls_to_none, parse_config, required, run_main
from pipeline.common.data import read_saved
from pipeline.common.lock import one_writer
from pipeline.common.models import (
    check_model_dir,
    load_policy_for_inference,
    load_scoring_function,
    load_tokenizer,
)
from pipeline.common.outputs import ALTERNATIVES, write_file_atomically
from pipeline.common.tables import number
from pipeline.lm.logprobs import sequence_logprobs
from pipeline.lm.sampling import (
    check_untruncated,
    decode_responses,
    first_eos_mask,
    generate,
    generation_config,
    sampling_summary,
    set_aside,
    tokenize_prompts,
)
from pipeline.lm.scoring import RewardScorer, sharded_pair_scores


@dataclass
class EvalArguments:
    run_dir: str | None = required("run dir (runs/<recipe>); eval.json, report.md, plots/ go here")
    sft_model_path: str | None = field(default=None, metadata={"help": "default: <run_dir>/sft"})
    ppo_model_path: str | None = field(default=None, metadata={"help": "default: <run_dir>/ppo"})
    alternatives: list[str] = field(
        default_factory=lambda: list(ALTERNATIVES),
        metadata={"help": "stages whose policy in <run_dir>/<stage> joins the leaderboard when it is there"},
    )
    reward_model_path: str | None = field(default=None, metadata={"help": "default: <run_dir>/reward"})
    reward_fn: str | None = field(
        default=None,
        metadata={"help": "score with a Python function 'module:function' f(prompts, responses) -> scores instead "
                  "of a reward model (as PPO's reward_fn): the reward-model figures are then the function's"},
    )  # fmt: skip
    eval_prompts_path: str | None = field(
        default=None, metadata={"help": "default: <run_dir>/data/eval_prompts"}
    )
    preference_path: str | None = field(default=None, metadata={"help": "default: <run_dir>/data/preference"})
    preference_split: str = field(
        default="test", metadata={"help": "split of held-out pairs for RM accuracy"}
    )
    prompt_field: str = "prompt"
    labeler: str | None = field(
        default=None,
        metadata={"help": "'module:function' f(prompts, responses) -> list[float] (built-in task: "
                  "data_prep.task:labeler_scores); null when there is no programmatic labeler"},
    )  # fmt: skip
    num_prompts: int | None = field(
        default=None, metadata={"help": "use the first N eval prompts (all if unset)"}
    )
    num_pairs: int | None = field(
        default=None, metadata={"help": "use the first N held-out pairs (all if unset)"}
    )
    max_new_tokens: int = 48
    temperature: float = 0.7
    top_k: int | None = None  # refused unless neutral, as for PPO (README, "How PPO samples")
    top_p: float = 1.0
    max_prompt_length: int = 512
    batch_size: int = field(default=32, metadata={"help": "per-process batch for generation and scoring"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run model code from the hub (off: only transformers' own classes)"}
    )
    seed: int = 0
    own_samples_per_prompt: int = field(
        default=4,
        metadata={"help": "K answers per prompt from each policy, on own_samples_num_prompts prompts: how often the "
                  "reward model orders pairs of a policy's own answers as the labeler does "
                  "(rm_accuracy_on_own_samples; 0 or no labeler: not measured)"},
    )  # fmt: skip
    own_samples_num_prompts: int = field(
        default=64, metadata={"help": "held-out prompts (the first ones) for rm_accuracy_on_own_samples"}
    )
    num_report_samples: int = field(default=8, metadata={"help": "rows in the report's side-by-side table"})
    max_kl: float = field(
        default=10.0,
        metadata={
            "help": "KL(PPO || SFT) per answer above this is reported as drift (pipeline.analysis.health)"
        },
    )
    # As in TrainingArguments (pipeline/common/tracking.py): the figures go to the PPO stage's tracker run when it has one.
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "tensorboard, trackio, wandb (comma-separated), all or none"}
    )
    run_name: str | None = field(
        default=None, metadata={"help": "tracker run name if PPO left none to continue"}
    )
    project: str = field(default="huggingface", metadata={"help": "tracker project if PPO left none"})

    def __post_init__(self):
        if self.run_dir is None:
            return  # parse_config reports the missing key with the recipe file's name
        run = Path(self.run_dir)
        self.sft_model_path = self.sft_model_path or str(run / "sft")
        self.ppo_model_path = self.ppo_model_path or str(run / "ppo")
        nulls_to_none(self, ("reward_model_path", "reward_fn", "labeler"))
        if self.reward_fn and self.reward_model_path:
            raise UserError("Set one of reward_model_path and reward_fn, not both (set the other to null).")
        if not self.reward_fn:
            self.reward_model_path = self.reward_model_path or str(run / "reward")
        self.eval_prompts_path = self.eval_prompts_path or str(run / "data" / "eval_prompts")
        self.preference_path = self.preference_path or str(run / "data" / "preference")
        if self.temperature <= 0:
            raise UserError("temperature must be > 0: the policies are compared on sampled answers.")

        check_untruncated(self.top_k, self.top_p, "Evaluation, like PPO,")
        if self.own_samples_per_prompt == 1 or self.own_samples_per_prompt < 0:
            raise ConfigError(
                f"own_samples_per_prompt is {self.own_samples_per_prompt}: at least 2 answers per prompt make a "
                "pair; 0 turns the measurement off."
            )
        unknown = sorted(set(self.alternatives) - set(ALTERNATIVES))
        if unknown:
            raise ConfigError(f"alternatives: {unknown} are not stages; choose from {list(ALTERNATIVES)}.")


CONFIG_TYPES = (EvalArguments, ModelConfig)

# Which stage writes each input, for errors that say what to run.
PRODUCERS = {"sft": "make sft", "ppo": "make ppo", "reward": "make reward", "data": "make data"}


MODEL_FILES = ("config.json", "adapter_config.json")  # a finished stage wrote one of these


def policy_paths(args: EvalArguments) -> dict[str, str]:
    """The policies compared with SFT: PPO, then each alternative stage whose folder holds a finished policy."""
    paths = {"ppo": args.ppo_model_path}
    for stage in args.alternatives:
        folder = Path(args.run_dir) / stage
        if any((folder / f).is_file() for f in MODEL_FILES):
            paths[stage] = str(folder)
    return paths


def check_inputs(args: EvalArguments) -> None:
    needed = [
        ("eval_prompts_path", "held-out prompts", "data"),
        ("preference_path", "held-out preference pairs", "data"),
        ("sft_model_path", "SFT policy", "sft"),
        ("reward_model_path", "reward model", "reward"),
        ("ppo_model_path", "PPO policy", "ppo"),
    ]
    if args.reward_fn:  # scored by a function: no reward model to look for
        needed = [entry for entry in needed if entry[0] != "reward_model_path"]
    for name, what, stage in needed:
        path = Path(getattr(args, name))
        is_model = name.endswith("model_path")
        if not path.exists() or (is_model and not any((path / f).is_file() for f in MODEL_FILES)):
            raise UserError(
                f"The {what} ({path}) does not exist yet or is incomplete: run the {stage} stage first ({PRODUCERS[stage]} "
                f"RECIPE=recipes/<name>), or point eval at it with --{name}."
            )
    for name, _, _ in needed:  # then every model folder whole, or the error names the file that is not
        if name.endswith("model_path"):
            check_model_dir(getattr(args, name))


def log(message: str) -> None:
    """Progress on the main process only (one line per phase, with elapsed time)."""
    if distributed_state().is_main_process:
        print(f"[eval {time.monotonic() - _START:6.1f}s] {message}", flush=True)


_START = time.monotonic()


# --- policies ----------------------------------------------------------------------------------------------


def sample(model, tokenizer, prompts: list[str], args: EvalArguments, seed: int, name: str = "evaluation"):
    """Prompt batches and sampled responses (token ids, padded after EOS), batched with left padding.

    The sampling code of PPO's rollouts (`pipeline.lm.sampling`), so eval samples exactly as training did.
    """
    config = generation_config(args.max_new_tokens, args.temperature, tokenizer)
    log(sampling_summary(name, config, set_aside(model, config)))
    set_seed(seed)
    queries, responses = [], []
    for i in range(0, len(prompts), args.batch_size):
        batch = tokenize_prompts(
            tokenizer, prompts[i : i + args.batch_size], args.max_prompt_length, model.device
        )
        queries.append(batch)
        responses.append(generate(model, batch, config, args.batch_size))
    return queries, responses


# --- the evaluation ----------------------------------------------------------------------------------------


def evaluate_policies(
    args: EvalArguments,
    model_args,
    prompts: list[str],
    device,
    seed: int,
    policies: dict[str, str],
    own_prompts: list[str] = (),
) -> tuple[list[dict], dict[str, list[dict]]]:
    """One record per prompt: every policy's answer and its length, and each policy sample's log-ratio to SFT;
    and per policy, K answers to each of `own_prompts` (`sample_groups`)."""
    tokenizer = load_tokenizer(args.sft_model_path, trust_remote_code=args.trust_remote_code)
    for name, path in policies.items():
        if (
            load_tokenizer(path, trust_remote_code=args.trust_remote_code).get_vocab()
            != tokenizer.get_vocab()
        ):
            raise UserError(
                f"The {name.upper()} policy ({path}) and the SFT policy ({args.sft_model_path}) have different "
                f"tokenizers; {name.upper()} must start from the SFT policy for the comparison and the KL to mean "
                "anything."
            )
    records = [{"prompt": p} for p in prompts]
    groups = {}

    log(f"sampling {len(prompts)} answers per process from the SFT policy {args.sft_model_path}")
    sft = load_policy_for_inference(args.sft_model_path, model_args, device, args.trust_remote_code)
    queries, responses = sample(sft, tokenizer, prompts, args, seed, "the SFT policy")
    _store(records, "sft", tokenizer, responses)
    _store_logprobs(records, "sft", sft, queries, responses, tokenizer, args.temperature)
    del responses
    groups["sft"] = sample_groups(sft, tokenizer, own_prompts, args, seed, "the SFT policy")

    for name, path in policies.items():
        log(f"sampling from the {name.upper()} policy {path}")
        policy = load_policy_for_inference(path, model_args, device, args.trust_remote_code)
        queries, responses = sample(policy, tokenizer, prompts, args, seed, f"the {name.upper()} policy")
        _store(records, name, tokenizer, responses)
        log(f"KL of {name.upper()} from SFT on its answers")
        _store_logprobs(records, name, policy, queries, responses, tokenizer, args.temperature)
        _store_logprobs(records, f"{name}_under_sft", sft, queries, responses, tokenizer, args.temperature)
        for record in records:
            record[f"{name}_log_ratio"] = record[f"{name}_logprob"] - record.pop(f"{name}_under_sft_logprob")
        groups[name] = sample_groups(policy, tokenizer, own_prompts, args, seed, f"the {name.upper()} policy")
        del policy
    del sft
    return records, groups


# Another stream than the one-answer-per-prompt samples, which stay what they were without this measurement.
OWN_SAMPLES_SEED_OFFSET = 7919


def sample_groups(
    model, tokenizer, prompts: list[str], args: EvalArguments, seed: int, name: str
) -> list[dict]:
    """K = own_samples_per_prompt answers to each prompt from `model`: the pairs of a policy's own answers that the
    reward model should order as the labeler does (InstructGPT's labelers ranked K answers of one model)."""
    k = args.own_samples_per_prompt
    if not prompts or k < 2:
        return []
    repeated = [p for p in prompts for _ in range(k)]
    _, batches = sample(
        model, tokenizer, repeated, args, seed + OWN_SAMPLES_SEED_OFFSET, f"{name}, {k} answers per prompt,"
    )
    texts, ended = [], []
    for batch in batches:
        t, e, _ = decode_responses(tokenizer, batch, first_eos_mask(batch, tokenizer.eos_token_id))
        texts += t
        ended += e
    return [{"prompt": p, "responses": texts[i * k : (i + 1) * k], "ended": ended[i * k : (i + 1) * k]}
            for i, p in enumerate(prompts)]  # fmt: skip


def score_groups(groups: dict[str, list[dict]], reward_model: RewardScorer, labeler) -> dict[str, list[dict]]:
    """Each group's answers scored by the reward model and the labeler (`rm_scores`, `labels`)."""
    for policy_groups in groups.values():
        if not policy_groups:
            continue
        prompts = [g["prompt"] for g in policy_groups for _ in g["responses"]]
        responses = [r for g in policy_groups for r in g["responses"]]
        ended = [e for g in policy_groups for e in g["ended"]]
        rm_scores = reward_model(prompts, responses, ended).tolist()
        labels = labeler(prompts, responses)
        i = 0
        for group in policy_groups:
            k = len(group["responses"])
            group["rm_scores"], group["labels"] = rm_scores[i : i + k], labels[i : i + k]
            i += k
    return groups


def _store_logprobs(records, name: str, model, queries, responses, tokenizer, temperature: float) -> None:
    """`<name>_logprob`: log-probability of each answer under `model` (the entropy and KL estimates use it)."""
    i = 0
    for query, batch in zip(queries, responses):
        mask = first_eos_mask(batch, tokenizer.eos_token_id)
        for value in sequence_logprobs(model, query, batch, mask, temperature).tolist():
            records[i][f"{name}_logprob"] = value
            i += 1


def _store(records: list[dict], name: str, tokenizer, responses) -> None:
    i = 0
    for batch in responses:
        mask = first_eos_mask(batch, tokenizer.eos_token_id)
        for text, ended, length in zip(*decode_responses(tokenizer, batch, mask)):
            records[i].update({f"{name}_response": text, f"{name}_ended": ended, f"{name}_length": length})
            i += 1


def score_records(records: list[dict], reward_model: RewardScorer, labeler, names: list[str]) -> None:
    prompts = [r["prompt"] for r in records]
    for name in names:
        responses = [r[f"{name}_response"] for r in records]
        rm_scores = reward_model(prompts, responses, [r[f"{name}_ended"] for r in records]).tolist()
        labels = labeler(prompts, responses) if labeler else [None] * len(records)
        for record, score, label in zip(records, rm_scores, labels):
            record[f"{name}_reward_model_score"] = score
            record[f"{name}_labeler_score"] = None if label is None else float(label)


def load_inputs(args: EvalArguments) -> tuple[list[str], list[dict]]:
    prompts_ds = read_saved(Path(args.eval_prompts_path), "Evaluation prompts")
    if args.prompt_field not in prompts_ds.column_names:
        raise UserError(
            f"{args.eval_prompts_path} has columns {prompts_ds.column_names}; expected '{args.prompt_field}'."
        )
    prompts = list(prompts_ds[args.prompt_field])[: args.num_prompts]
    preference = read_saved(Path(args.preference_path), "Held-out pairs")
    if isinstance(preference, DatasetDict):
        if args.preference_split not in preference:
            raise UserError(
                f"{args.preference_path} has splits {list(preference)}; set preference_split to one of them."
            )
        preference = preference[args.preference_split]
    missing = {"prompt", "chosen", "rejected"} - set(preference.column_names)
    if missing:
        raise UserError(
            f"{args.preference_path} lacks columns {sorted(missing)}; expected prompt/chosen/rejected."
        )
    pairs = preference.select_columns(["prompt", "chosen", "rejected"]).to_list()[: args.num_pairs]
    if not prompts or not pairs:
        raise UserError(f"No eval prompts ({len(prompts)}) or held-out pairs ({len(pairs)}) to evaluate on.")
    return prompts, pairs


def ordered_share(items: list, state) -> list:
    """This rank's contiguous share of `items`, unpadded (every item once over all ranks)."""
    per_rank = -(-len(items) // state.num_processes)
    return items[state.process_index * per_rank : (state.process_index + 1) * per_rank]


def distributed_state():
    """Accelerate's process state. Without a GPU, ask for CPU explicitly: PartialState() otherwise ignores the
    ranks that torchrun / `accelerate launch` (MULTI_CPU) started and every process thinks it is the main one."""
    return PartialState(cpu=not torch.cuda.is_available())


def main(args=None):
    eval_args, model_args = parse_config(CONFIG_TYPES, args)
    trackers = tracking.trackers(eval_args.report_to)
    check_inputs(eval_args)
    labeler = load_scoring_function(eval_args.labeler, "labeler") if eval_args.labeler else None
    if eval_args.reward_fn:  # a wrong 'module:function' fails now, not after every policy has sampled
        load_scoring_function(eval_args.reward_fn, "reward_fn")
    prompts, pairs = load_inputs(eval_args)

    state = distributed_state()
    with one_writer(eval_args.run_dir, "eval", state.is_main_process):  # eval.json, report.md, plots/
        seed = eval_args.seed + state.process_index  # same seed for both policies; distinct streams per rank
        policies = policy_paths(eval_args)
        for (
            stage
        ) in eval_args.alternatives:  # the alternatives found in the run, whole (check_inputs did PPO's)
            if stage in policies:
                check_model_dir(policies[stage])
        # rm_accuracy_on_own_samples: the first own_samples_num_prompts prompts, each rank K answers to its share
        own = ordered_share(prompts[: eval_args.own_samples_num_prompts], state) if labeler else []
        with state.split_between_processes(prompts, apply_padding=True) as shard:
            records, groups = evaluate_policies(
                eval_args, model_args, list(shard), state.device, seed, policies, own
            )
        scorer = (
            f"the function {eval_args.reward_fn}"
            if eval_args.reward_fn
            else f"the reward model {eval_args.reward_model_path}"
        )
        log(f"scoring answers with {scorer}" + (" and the labeler" if labeler else ""))
        reward_model = RewardScorer(eval_args.reward_model_path, eval_args.reward_fn, model_args, state.device,
                                    eval_args.batch_size, eval_args.trust_remote_code)  # fmt: skip
        score_records(records, reward_model, labeler, ["sft", *policies])
        if labeler:
            log("reward-model accuracy on pairs of each policy's own answers")
            score_groups(groups, reward_model, labeler)
        own_pairs = {
            name: own_sample_pairs(gather_object(groups.get(name, []))) for name in ["sft", *policies]
        }
        log(f"reward-model accuracy on {len(pairs)} held-out pairs")
        chosen, rejected, _ = sharded_pair_scores(reward_model, pairs, state)
        margins = [c - r for c, r in zip(chosen, rejected)]
        # Shards are contiguous and the last one padded by repeating its end: the first n gathered items are exact.
        records = gather_object(records)[: len(prompts)]

        result = summarize(records, margins, eval_args, state.num_processes, chosen, policies, own_pairs)
        if state.is_main_process:
            write_outputs(eval_args, result, records, trackers)
        state.wait_for_everyone()
        state.destroy_process_group()  # before exit: a live gloo/NCCL group can abort interpreter shutdown
        return result


def write_outputs(args: EvalArguments, result: dict, records: list[dict], trackers: list[str] = ()) -> None:
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ppo_run = tracking.read_identity(Path(args.ppo_model_path) / tracking.IDENTITY_FILE)
    config = {f"eval/{k}": v for k, v in tracking.public_config(args).items()}
    tracker = tracking.start(trackers, "eval", run, args, config, ppo_run)
    previous = run / "eval.json"
    if previous.is_file() and "rounds" not in result:
        # the rounds' table describes rounds/, which a new evaluation of the run leaves as it was
        rounds = json.loads(previous.read_text()).get("rounds")
        if rounds:
            result["rounds"] = rounds
    write_file_atomically(run / "eval.json", json.dumps(result, indent=2) + "\n")
    with open(run / "eval_samples.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    report = write_report(
        run, result, records, Path(args.ppo_model_path) / "metrics.jsonl", args.num_report_samples,
        tracker.where() or tracking.how_to_open(ppo_run),
    )  # fmt: skip
    log_to_trackers(
        tracker, result, records, run / "plots", (ppo_run or {}).get("step", 0), args.num_report_samples
    )
    print(headline(result, report))


def log_to_trackers(tracker, result: dict, records: list[dict], plots: Path, step: int, n: int) -> None:
    """The headline figures, the report's plots and its side-by-side samples, at the PPO run's last step."""
    figures = {f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}
    for name, policy in result["policies"].items():
        figures.update({f"eval/{name}/{k}": v for k, v in policy.items() if isinstance(v, float)})
    key = (
        "labeler_score"
        if records and records[0].get("sft_labeler_score") is not None
        else "reward_model_score"
    )
    columns = ["prompt", "SFT answer", f"SFT {key}", "PPO answer", f"PPO {key}"]
    rows = [
        [r["prompt"], r["sft_response"], r[f"sft_{key}"], r["ppo_response"], r[f"ppo_{key}"]]
        for r in records[:n]
    ]
    images = {f"eval/{p.stem}": p for p in sorted(plots.glob("*.png"))}
    tracker.log_results(figures, images, {"eval/samples": (columns, rows)}, step)
    tracker.finish()


def headline(result: dict, report: Path) -> str:
    """What the stage prints at the end: the report's path and every policy's figures, PPO's beside SFT's."""
    sft, ppo = result["policies"]["sft"], result["policies"]["ppo"]
    lines = [
        f"Report: {report}",
        f"  reward model accuracy on held-out pairs: {number(result['reward_model_accuracy'])}",
        f"  reward-model score  SFT {number(sft['reward_model_score'])}  PPO {number(ppo['reward_model_score'])}",
    ]
    if sft["labeler_score"] is not None:
        lines.append(
            f"  labeler score       SFT {number(sft['labeler_score'])}  PPO {number(ppo['labeler_score'])}"
        )
    lines.append(f"  KL(PPO || SFT) per answer: {number(ppo['kl_from_sft'])} nats")
    for name, policy in result["policies"].items():
        if name in ("sft", "ppo"):
            continue
        labeler = (
            f"  labeler {number(policy['labeler_score'])}" if policy["labeler_score"] is not None else ""
        )
        lines.append(f"  {name.upper():<5} reward-model score {number(policy['reward_model_score'])}{labeler}  "
                     f"KL {number(policy['kl_from_sft'])} nats")  # fmt: skip
    lines += [f"  WARNING: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
