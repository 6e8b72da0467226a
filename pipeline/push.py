"""Push a stage's output to the Hugging Face Hub with a generated model card; private by default.

    python -m pipeline.push --config recipes/tiny/push.yaml --stage ppo --repo_id you/tiny-rlhf-ppo
    python -m pipeline.push --config recipes/tiny/push.yaml --stage sft --weights merged --dry_run true
    make push STAGE=reward HUB_REPO=you/tiny-rm OFFLINE=0

Any stage can be pushed (base, sft, reward, ppo, grpo, rloo, dpo); `weights` picks the LoRA adapter or the plain
merged model.
Uses the real `huggingface_hub` client (create_repo + one create_commit); the token comes from `hf auth login`
or HF_TOKEN and is never printed. `dry_run` lists what would be uploaded and needs neither token nor network.
Stage scripts can call `push_stage(...)` at the end of a run to offer the same as an option.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from pipeline.analysis.model_card import (
    CardInfo,
    read_data_sources,
    read_eval,
    read_hyperparameters,
    render_card,
)
from pipeline.common.config import ConfigError, UserError, parse_config, required, run_main
from pipeline.common.hub import push_token
from pipeline.common.models import check_model_dir
from pipeline.common.outputs import STAGES
from pipeline.common.redact import is_secret

# Never uploaded: pickles nobody needs, PPO's value head (training only), temp files, any old card.
EXCLUDE = ("training_args.bin", "value_head.safetensors", "*.tmp", "README.md", ".*")


@dataclass
class PushArguments:
    stage: str = field(default="ppo", metadata={"help": f"which stage's output to push: one of {STAGES}"})
    run_dir: str | None = required("run dir holding <stage>/ and eval.json (runs/<recipe>)")
    recipe_dir: str | None = required("recipe whose YAML goes on the card (recipes/<recipe>)")
    repo_id: str | None = field(
        default=None, metadata={"help": "'user/name' on the Hub (required unless dry_run)"}
    )
    weights: str = field(default="adapter", metadata={"help": "'adapter' (LoRA) or 'merged' (plain model)"})
    private: bool = field(default=True, metadata={"help": "create the repo private (ignored if it exists)"})
    dry_run: bool = field(default=False, metadata={"help": "list what would be uploaded; upload nothing"})
    base_model_repo: str | None = field(
        default=None, metadata={"help": "hub id of the base model, written into a pushed adapter's config"}
    )
    license: str | None = None
    commit_message: str | None = None
    revision: str | None = field(default=None, metadata={"help": "branch to push to (default: main)"})

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}.")
        if self.weights not in ("adapter", "merged"):
            raise ConfigError(f"weights must be 'adapter' or 'merged', got {self.weights!r}.")


CONFIG_TYPES = (PushArguments,)


def weights_dir(stage_dir: Path, weights: str) -> Path:
    """Where the stage keeps the chosen weights: adapters at the root or in adapter/, plain models at the root
    or in merged/ (see ARCHITECTURE: sft and ppo write the adapter at the root, reward the plain model)."""
    marker, sub = ("adapter_config.json", "adapter") if weights == "adapter" else ("config.json", "merged")
    for candidate in (stage_dir / sub, stage_dir):
        if (candidate / marker).is_file() and (
            weights == "adapter" or not (candidate / "adapter_config.json").exists()
        ):
            return candidate
    other = "merged" if weights == "adapter" else "adapter"
    raise UserError(
        f"{stage_dir} holds no {weights} weights (looked for {marker} in {stage_dir} and {stage_dir / sub}). "
        f"Push --weights {other} instead, or rerun the stage with the option that writes them"
        + (" (merge_adapter: true / save_merged: true)." if weights == "merged" else ".")
    )


def files_to_upload(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not any(fnmatch.fnmatch(p.name, pat) for pat in EXCLUDE)
    )


def base_model_of(folder: Path) -> str | None:
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        if (folder / name).is_file():
            value = json.loads((folder / name).read_text()).get(key)
            if value:
                return value
    return None


def plan_upload(args: PushArguments):
    """The operations of the commit (path in repo -> local file or bytes) and the card."""
    run = Path(args.run_dir)
    stage_dir = run / args.stage
    if not stage_dir.is_dir():
        raise UserError(f"{stage_dir} does not exist: run the {args.stage} stage first (make {args.stage}).")
    weights = "merged" if args.stage == "base" else args.weights  # the base stage is a plain model
    folder = weights_dir(stage_dir, weights)
    check_model_dir(folder)  # never push a folder with a damaged or missing file
    uploads: dict[str, Path | bytes] = {f.name: f for f in files_to_upload(folder)}

    # Merged weights came from the same base as the stage's adapter: look there too.
    base_model = args.base_model_repo or next(
        filter(None, (base_model_of(d) for d in (folder, stage_dir, stage_dir / "adapter"))), None
    )
    if base_model and is_secret("base_model", base_model):  # a path holding a token stays off the card
        base_model = None
    base_is_local = bool(base_model) and args.base_model_repo is None and Path(base_model).exists()
    if weights == "adapter" and args.base_model_repo:  # make the adapter loadable from the Hub
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = args.base_model_repo
        uploads["adapter_config.json"] = (json.dumps(config, indent=2) + "\n").encode()

    eval_results = read_eval(run / "eval.json") if args.stage != "base" else None
    if (
        eval_results
        and args.stage not in eval_results.get("policies", {})
        and args.stage not in ("sft", "reward")
    ):
        eval_results = None  # eval.json predates this policy (or left it out): no figures rather than others'

    if eval_results:
        uploads["rlhf_eval.json"] = run / "eval.json"
    plots = []
    if args.stage == "ppo":
        for png in sorted((run / "plots").glob("*.png")):
            uploads[f"plots/{png.name}"] = png
            plots.append(f"plots/{png.name}")

    recipe = Path(args.recipe_dir)
    card = render_card(
        CardInfo(
            repo_id=args.repo_id or f"<user>/{run.name}-{args.stage}",
            stage=args.stage,
            weights=weights,
            base_model=base_model,
            base_model_is_local=base_is_local,
            hyperparameters=read_hyperparameters(recipe / f"{args.stage}.yaml"),
            data=read_data_sources(recipe / "data.yaml"),
            eval_results=eval_results,
            license=args.license,
            plots=plots,
        )
    )
    uploads["README.md"] = card.encode()
    return folder, uploads, base_is_local


def describe_uploads(uploads: dict[str, Path | bytes]) -> list[str]:
    lines = []
    for path_in_repo, source in sorted(uploads.items()):
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        origin = "generated" if isinstance(source, bytes) else str(source)
        lines.append(f"  {path_in_repo:<40} {size:>12,} bytes  ({origin})")
    return lines


def push_stage(args: PushArguments) -> str | None:
    """Push (or with dry_run, list) a stage's output; returns the commit URL when pushed."""
    if (
        not args.dry_run and not args.repo_id
    ):  # checked here, not in the dataclass: recipes leave it to the user
        raise ConfigError(
            "Set repo_id ('user/name', e.g. make push HUB_REPO=you/my-model), or use --dry_run true."
        )
    folder, uploads, base_is_local = plan_upload(args)
    where = args.repo_id or "(no repo_id)"
    print(f"{'Would upload' if args.dry_run else 'Uploading'} {len(uploads)} files from {folder} to {where} "
          f"({'private' if args.private else 'public'}, {args.weights if args.stage != 'base' else 'plain'} weights):")  # fmt: skip
    print("\n".join(describe_uploads(uploads)))
    if base_is_local and args.stage != "base":
        print(
            "note: the base model is a local path; push it as well and pass --base_model_repo so loaders find it."
        )
    if args.dry_run:
        return None

    api = HfApi(token=push_token("push"))
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src if isinstance(src, bytes) else str(src))
                  for p, src in sorted(uploads.items())]  # fmt: skip
    try:
        repo = api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
        commit = api.create_commit(
            repo_id=repo.repo_id,
            operations=operations,
            commit_message=args.commit_message
            or f"Upload {args.stage} stage ({args.weights}) from {args.run_dir}",
            revision=args.revision,
        )
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as err:
        # Hub errors name the URL and the server's reason, never the token.
        raise UserError(f"Pushing to {args.repo_id} failed: {type(err).__name__}: {err}") from err
    print(f"Pushed to {commit.commit_url}")
    return commit.commit_url


def main(args=None):
    (push_args,) = parse_config(CONFIG_TYPES, args)
    return push_stage(push_args)


if __name__ == "__main__":
    run_main(main)
