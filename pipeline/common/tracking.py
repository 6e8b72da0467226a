"""Experiment tracking, the same in every stage: TensorBoard, Trackio and W&B behind one small interface.

`report_to`, `run_name` and `project` mean what they mean in transformers' TrainingArguments (`report_to` also
takes a comma-separated list on the command line: `--report_to tensorboard,wandb`). The base, SFT and reward
stages hand their Trainer a `TrackerCallback`, PPO and evaluation call `start()`; either way:

- only the main process logs; a tracker whose package is missing is a UserError naming the extra to install;
- a run is named `run_name`, or `<run folder>-<stage>-<date>-<time>`; its identity (name, W&B run id, folders) is
  stored with the checkpoints, so a resumed stage continues the same tracker run; evaluation continues the PPO
  stage's run (from `<ppo output>/tracking.json`);
- the config each tracker records holds no token: keys such as `hub_token` are dropped, and so is any value that
  contains a secret from the environment (HF_TOKEN, WANDB_API_KEY, ...); W&B also never sees them on its copy
  of the command line.

Where things go: TensorBoard writes to `$TENSORBOARD_LOGGING_DIR/<run name>`, by default
`<run folder>/tensorboard/<run name>` (`runs/tiny/tensorboard/...`); W&B to `$WANDB_DIR`, by default the run
folder (`WANDB_MODE=offline` for offline runs); Trackio to its own local store (`$TRACKIO_DIR`, by default
`~/.cache/huggingface/trackio`), or to `trackio_space_id`'s Space.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations.integration_utils import rewrite_logs

from pipeline.common.config import ConfigError, UserError
from pipeline.common.outputs import write_file_atomically
from pipeline.common.redact import argv_without_secrets, public_items
from pipeline.common.tables import markdown_table

SUPPORTED = ("tensorboard", "trackio", "wandb")
INSTALL = 'pip install -e ".[trackers]"'
PASSTHROUGH = ("kubeflow",)  # transformers adds it by itself inside a Kubeflow TrainJob; left to transformers
IDENTITY_FILE = "tracking.json"


def trackers(report_to) -> list[str]:
    """`report_to` as tracker names ('none' -> [], 'all' -> every installed one); unknown or missing: an error."""
    values = [] if report_to is None else [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip() for v in values for n in str(v).split(",") if n.strip() not in ("", "none")]
    if "all" in names:
        names = [n for n in SUPPORTED if importlib.util.find_spec(n) is not None]
    names = [n for n in dict.fromkeys(names) if n not in PASSTHROUGH]
    for name in names:
        if name not in SUPPORTED:
            raise ConfigError(f"report_to {name!r} is not supported: use {', '.join(SUPPORTED)} or none.")
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"report_to {name}: the {name} package is not installed; install the trackers: {INSTALL}"
            )
    return names


def public_config(*configs) -> dict:
    """The configs as one flat dict of plain values (lists and dicts as JSON text), with no secret
    (`pipeline.common.redact`)."""
    return {
        key: value if isinstance(value, str | int | float | bool | type(None)) else json.dumps(value)
        for key, value in public_items(*configs).items()
    }


def read_identity(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_identity(path: Path, identity: dict) -> None:
    write_file_atomically(path, json.dumps(identity, indent=2) + "\n")


def start(
    names: list[str],
    stage: str,
    folder: Path,
    args,
    config: dict,
    identity: dict | None = None,
    purge_from: int | None = None,
    main: bool = True,
) -> Tracking:
    """Open the trackers `names` for a stage whose outputs live in `folder` (the run folder, e.g. runs/tiny).

    `identity` continues that tracker run (a resumed stage, or evaluation adding to the PPO run); `purge_from` is
    the first step the resumed run logs again: TensorBoard hides what a crashed run had logged from there on.
    `args` gives run_name, project and, where it has them, the trackio_* fields of TrainingArguments.
    """
    if not names or not main:
        return Tracking([], None)
    resumed = identity is not None
    identity = dict(identity or {})
    identity.setdefault(
        "name", args.run_name or f"{folder.resolve().name}-{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    identity.setdefault("project", args.project)
    identity["trackers"] = sorted(set(identity.get("trackers", [])) | set(names))
    backends = []
    for name in names:
        backend = BACKENDS[name]
        backends.append(
            backend(identity, folder, args, config, resumed and backend.KEY in identity, purge_from)
        )
    return Tracking(backends, identity)


class Tracking:
    """The open trackers of one stage; with none (tracking off, or not the main process) every call does nothing."""

    def __init__(self, backends: list, identity: dict | None):
        self.backends, self.identity = backends, identity

    def log(self, metrics: dict, step: int) -> None:
        """Scalars at `step` (every number in `metrics`; `step` itself is the x-axis, not a metric)."""
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
        for backend in self.backends:
            backend.log(scalars, step)

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        """A table (the tracker's table type; TensorBoard: a markdown table in its text tab)."""
        for backend in self.backends:
            backend.table(key, columns, rows, step)

    def log_results(self, metrics: dict, images: dict[str, Path], tables: dict, step: int) -> None:
        """A run's final figures: headline scalars, images and tables ({key: (columns, rows)}) at `step`.

        W&B takes no step below a resumed run's last one: there the scalars go to the run summary, the rest to
        the run's next step."""
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        for backend in self.backends:
            backend.results(scalars, images, tables, step)

    def where(self) -> list[str]:
        """One line per tracker on how to open what was logged."""
        return how_to_open(self.identity) if self.backends else []

    def finish(self) -> None:
        for backend in self.backends:
            backend.finish()
        self.backends = []


def how_to_open(identity: dict | None) -> list[str]:
    if not identity:
        return []
    lines = []
    if "tensorboard_dir" in identity:
        logdir = Path(identity["tensorboard_dir"]).parent
        lines.append(f"TensorBoard: `tensorboard --logdir {logdir}` (run `{identity['name']}`)")
    if "trackio_project" in identity:
        if identity.get("trackio_space_id"):
            lines.append(
                f"Trackio: the Space {identity['trackio_space_id']} (project `{identity['trackio_project']}`)"
            )
        else:
            env = f"TRACKIO_DIR={identity['trackio_dir']} " if identity.get("trackio_dir") else ""
            lines.append(
                f"Trackio: `{env}trackio show --project {identity['trackio_project']}` (run `{identity['name']}`)"
            )
    if identity.get("wandb_url"):
        lines.append(f"W&B: {identity['wandb_url']}")
    elif "wandb_id" in identity:
        lines.append(
            f"W&B (offline): `wandb sync {identity.get('wandb_sync_dir', identity['wandb_dir'])}` uploads run "
            f"`{identity['wandb_id']}`"
        )
    return lines


# --- one class per tracker --------------------------------------------------------------------------------------


class TensorBoard:
    KEY = "tensorboard_dir"

    def __init__(self, identity, folder, args, config, resumed, purge_from):
        from torch.utils.tensorboard import SummaryWriter  # optional trackers (needs the tensorboard package)

        root = os.environ.get("TENSORBOARD_LOGGING_DIR") or str(folder / "tensorboard")
        identity.setdefault(self.KEY, str(Path(root).expanduser() / identity["name"]))
        self.writer = SummaryWriter(identity[self.KEY], purge_step=purge_from if resumed else None)
        if not resumed:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, scalars, step):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, key, columns, rows, step):
        self.writer.add_text(key, "\n".join(markdown_table(columns, rows)), step)
        self.writer.flush()

    def results(self, scalars, images, tables, step):
        from matplotlib.image import imread  # only for a run's final figures: slow to import, rarely needed

        for key, path in images.items():
            self.writer.add_image(key, imread(path)[..., :3], step, dataformats="HWC")
        for key, (columns, rows) in tables.items():
            self.table(key, columns, rows, step)
        self.log(scalars, step)

    def finish(self):
        self.writer.close()


class Trackio:
    KEY = "trackio_project"

    def __init__(self, identity, folder, args, config, resumed, purge_from):
        import trackio  # optional trackers, like wandb below: imported only when asked for

        self.trackio = trackio
        identity.setdefault(self.KEY, identity["project"])
        identity.setdefault("trackio_space_id", getattr(args, "trackio_space_id", None))
        identity.setdefault("trackio_bucket_id", getattr(args, "trackio_bucket_id", None))
        identity["trackio_dir"] = os.environ.get("TRACKIO_DIR")
        if resumed and not identity["trackio_space_id"]:  # a resumed run's config is replaced: keep its own
            from trackio.sqlite_storage import SQLiteStorage

            stored = SQLiteStorage.get_run_config(identity[self.KEY], identity["name"]) or {}
            config = {**{k: v for k, v in stored.items() if not k.startswith("_")}, **config}
        self.run = trackio.init(
            project=identity[self.KEY],
            name=identity["name"],
            space_id=identity["trackio_space_id"],
            bucket_id=identity["trackio_bucket_id"],
            private=getattr(args, "hub_private_repo", None),
            config=config,
            resume="allow" if resumed else "never",
            embed=False,
        )

    def log(self, scalars, step):
        self.run.log(scalars, step=step)

    def table(self, key, columns, rows, step):
        self.run.log({key: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def results(self, scalars, images, tables, step):
        media = {k: self.trackio.Image(str(p)) for k, p in images.items()}
        media.update({k: self.trackio.Table(columns=c, data=r) for k, (c, r) in tables.items()})
        self.run.log({**scalars, **media}, step=step)

    def finish(self):
        self.run.finish()


class WandB:
    KEY = "wandb_id"

    def __init__(self, identity, folder, args, config, resumed, purge_from):
        import wandb

        self.wandb = wandb
        project = identity["project"]
        if project == "huggingface":  # transformers' default: WANDB_PROJECT, as transformers reads it, wins
            project = os.environ.get("WANDB_PROJECT", project)
        identity.setdefault("wandb_project", project)
        identity.setdefault(self.KEY, secrets.token_hex(4))
        identity.setdefault("wandb_dir", os.environ.get("WANDB_DIR") or str(folder))
        Path(identity["wandb_dir"]).mkdir(parents=True, exist_ok=True)
        with argv_without_secrets():  # W&B keeps a copy of the command line
            self.run = wandb.init(
                project=identity["wandb_project"],
                name=identity["name"],
                id=identity[self.KEY],
                dir=identity["wandb_dir"],
                resume="allow" if resumed else None,
            )
        self.run.config.update(config, allow_val_change=True)
        if self.run.offline:
            identity["wandb_sync_dir"] = str(Path(self.run.settings.sync_dir).resolve())
        else:
            identity["wandb_url"] = self.run.url

    def log(self, scalars, step):
        self.run.log(scalars, step=step)

    def table(self, key, columns, rows, step):
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def results(self, scalars, images, tables, step):
        self.run.summary.update(scalars)
        media = {k: self.wandb.Image(str(p)) for k, p in images.items()}
        media.update({k: self.wandb.Table(columns=c, data=r) for k, (c, r) in tables.items()})
        self.run.log(media)

    def finish(self):
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "trackio": Trackio, "wandb": WandB}


# --- the Trainer stages (base, SFT, reward) ---------------------------------------------------------------------


class TrackerCallback(TrainerCallback):
    """Logs a transformers Trainer's logs (`train/loss`, `eval/loss`, ... at the global step) through `start()`.

    Built from the stage's configs right after parsing, so a missing tracker package fails before any model loads;
    it takes the supported trackers out of `args.report_to`, so transformers' own integrations do not log twice.
    The identity is written to `<args.output_dir>/tracking.json` (the checkpoint folder), where a resumed run
    (`--resume_from_checkpoint true`) finds it.
    """

    def __init__(self, stage: str, output_dir: str | Path, args, *more_configs):
        self.names = trackers(args.report_to)
        self.config = public_config(args, *more_configs) if self.names else {}
        args.report_to = [r for r in args.report_to if r in PASSTHROUGH]
        self.stage, self.folder = stage, Path(output_dir).parent
        self.tracking = Tracking([], None)

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.names or not state.is_world_process_zero or self.tracking.backends:
            return
        path = Path(args.output_dir) / IDENTITY_FILE
        identity = read_identity(path) if state.global_step > 0 else None
        self.tracking = start(
            self.names, self.stage, self.folder, args, self.config, identity, state.global_step + 1
        )
        write_identity(path, self.tracking.identity)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.tracking.backends and logs:
            self.tracking.log(rewrite_logs(logs), state.global_step)

    def finish(self) -> None:
        """After the stage's last log (its final evaluation comes after training ends)."""
        self.tracking.finish()
