"""Push a round's comparisons and rankings to the Hub as a data set, with a data card; private by default.

    make push-data ROUND=1 HUB_REPO=you/tiny-round-1 [ARGS="--dry_run true"]
    python -m pipeline.rounds.push_data --config recipes/tiny/rounds.yaml --round 1 --repo_id you/tiny-round-1

Two configs of one data set repo, through `datasets`' own `push_to_hub`: `comparisons` (prompt id, prompt, the K
answers, the policy that wrote them and its sampling settings) and `rankings` (the round's `ranked.jsonl`: ranks or
scores per answer, who ranked). The card says how the answers were sampled, who or what ranked them, the counts
and the raters' agreement (`rank_summary.json`). The token comes from `hf auth login` or HF_TOKEN, never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.config import ConfigError, UserError, parse_config, run_main
from pipeline.common.hub import push_token
from pipeline.rounds.comparisons import COMPARISONS, RANKED, read_comparisons, read_jsonl
from pipeline.rounds.config import CONFIG_TYPES
from pipeline.rounds.rank import SUMMARY, describe


@dataclass
class PushDataArguments:
    repo_id: str | None = field(default=None, metadata={"help": "'user/name' of the data set on the Hub"})
    private: bool = field(default=True, metadata={"help": "create the repo private (ignored if it exists)"})
    dry_run: bool = field(
        default=False, metadata={"help": "print the card and the row counts; upload nothing"}
    )

    def __post_init__(self):
        if not self.dry_run and (not self.repo_id or self.repo_id.count("/") != 1):
            raise ConfigError(
                f"repo_id {self.repo_id!r}: name the data set as user/name (make push-data HUB_REPO=...)."
            )


def comparison_records(comparisons: dict[str, dict]) -> list[dict]:
    return [
        {
            "id": c["id"],
            "prompt": c["prompt"],
            "responses": c["responses"],
            "round": c["round"],
            "policy": json.dumps(c["policy"]),
            "sampling": json.dumps(c.get("sampling", {})),
            "seed": c.get("seed"),
        }  # fmt: skip
        for c in comparisons.values()
    ]


def ranking_records(rows: list[dict]) -> list[dict]:
    """One schema for every row: ranks or scores (the other null), who ranked, each rater's ranks when merged."""
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "responses": r["responses"],
            "ranks": [float(x) for x in r["ranks"]] if r.get("ranks") is not None else None,
            "scores": [float(x) for x in r["scores"]] if r.get("scores") is not None else None,
            "rater": r["rater"],
            "by_rater": json.dumps(r["by_rater"]) if "by_rater" in r else None,
            "unusable": r.get("unusable", []),
        }  # fmt: skip
        for r in rows
    ]


def data_card(n: int, comparisons: dict[str, dict], summary: dict | None, repo_id: str | None) -> str:
    first = next(iter(comparisons.values()))
    k = sorted({len(c["responses"]) for c in comparisons.values()})
    sampling = (
        ", ".join(f"{key}={value}" for key, value in first.get("sampling", {}).items()) or "not recorded"
    )
    lines = [
        f"# Round {n} comparisons and rankings",
        "",
        "Answers of a policy to prompts, K per prompt, ranked by people and/or a programmatic labeler: the seeds' "
        "step 2 of the InstructGPT recipe, collected by rlhf-pipeline (`make collect`, `make label`, `make rank`).",
        "",
        "## How the answers were sampled",
        f"- Policy: `{first['policy'].get('path')}` (fingerprint `{first['policy'].get('fingerprint')}`)",
        f"- Sampling: {sampling}; seed {first.get('seed')}",
        f"- {len(comparisons)} prompts, {sum(len(c['responses']) for c in comparisons.values())} answers "
        f"(K = {'-'.join(str(x) for x in (k[0], k[-1])) if len(k) > 1 else k[0]} distinct answers per prompt)",
        "",
        "## Who ranked them",
    ]
    if summary is None:
        lines.append("Not ranked yet: this push holds the comparisons only.")
    else:
        lines.append(f"- {describe(summary)}")
        for rater, count in summary["by_rater"].items():
            lines.append(f"- `{rater}`: {count} prompts")
        if summary["filled_by_labeler"]:
            lines.append(f"- the labeler: {summary['filled_by_labeler']} prompts nobody else ranked")
        agreed = summary["agreement"]
        if agreed["agreement"] is not None:
            lines.append(f"- Agreement between raters: {agreed['agreement']:.1%} of {agreed['pairs']} answer pairs "
                         "both ordered (InstructGPT reports 72.6% among its training labelers)")  # fmt: skip
    lines += [
        "",
        "## Use",
        "```python",
        "from datasets import load_dataset",
        f'comparisons = load_dataset("{repo_id or "user/name"}", "comparisons", split="train")',
        f'rankings = load_dataset("{repo_id or "user/name"}", "rankings", split="train")',
        "```",
        "`rankings` is the ranked format (`ranks`: 1 = best, ties share a rank; or `scores`: higher is better) that "
        "`python -m data_prep convert --format ranked` turns into preference pairs.",
    ]
    return "\n".join(lines) + "\n"


def main(args=None):
    config, _, push = parse_config((*CONFIG_TYPES, PushDataArguments), args)
    n = config.need_round()
    folder = config.round_dir(n)
    if not (folder / COMPARISONS).exists():
        raise UserError(
            f"{folder / COMPARISONS} does not exist: collect round {n} first (make collect ROUND={n})."
        )
    comparisons = read_comparisons(folder / COMPARISONS, n, config.policy_of(n))
    ranked = read_jsonl(folder / RANKED, "Rankings file") if (folder / RANKED).exists() else None
    summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).exists() else None
    card = data_card(n, comparisons, summary, push.repo_id)
    tables = {"comparisons": comparison_records(comparisons)}
    if ranked is not None:
        tables["rankings"] = ranking_records(ranked)
    if push.dry_run:
        print(card)
        print("Would push: " + ", ".join(f"{name} ({len(rows)} rows)" for name, rows in tables.items()))
        return
    upload(push, tables, card)
    print(f"Pushed round {n} to {push.repo_id} (data set; " + ", ".join(f"{name}: {len(rows)} rows" for name, rows in
          tables.items()) + ")")  # fmt: skip


def upload(push: PushDataArguments, tables: dict[str, list[dict]], card: str) -> None:
    from datasets import Dataset  # the Hub's libraries load only for a real push (a dry run needs neither)
    from huggingface_hub import DatasetCard, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = push_token("push-data")
    api = HfApi(token=token)
    try:
        api.create_repo(push.repo_id, repo_type="dataset", private=push.private, exist_ok=True)
        for name, rows in tables.items():
            Dataset.from_list(rows).push_to_hub(push.repo_id, config_name=name, token=token,
                                                commit_message=f"Upload {name}")  # fmt: skip
        # datasets wrote a card holding the configs' metadata: keep that metadata, put our text under it
        hub_card = DatasetCard(
            Path(api.hf_hub_download(push.repo_id, "README.md", repo_type="dataset")).read_text()
        )
        hub_card.text = card
        api.upload_file(path_or_fileobj=str(hub_card).encode(), path_in_repo="README.md", repo_id=push.repo_id,
                        repo_type="dataset", commit_message="Data card")  # fmt: skip
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as err:
        # Hub errors name the URL and the server's reason, never the token.
        raise UserError(f"Pushing to {push.repo_id} failed: {type(err).__name__}: {err}") from err


if __name__ == "__main__":
    run_main(main)
