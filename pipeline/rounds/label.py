"""The labeling page: a person ranks a round's K answers per prompt in the browser (Gradio).

    make label ROUND=1 [RATER=alice] [PORT=7860] [HOST=127.0.0.1]
    python -m pipeline.rounds.label --config recipes/tiny/rounds.yaml --round 1 --rater alice --port 7860

One prompt at a time with its answers as A, B, C, ... in an order shuffled per prompt and rater (recorded in each
line as `shown`). Order them best first by clicking the answers' letter buttons, or by typing the letters in the
order box ("B A=D C": '=' ties two answers) and pressing Enter; "skip" (or the Skip button) passes a prompt; an
answer may be flagged unusable (harmful, broken) with a note, and then need not be ordered (it ranks last). Each
ranking is appended to `<round>/labels/<rater>.jsonl` the moment it is saved (labels.py); reopening the page, or
restarting the server, goes on at the rater's first prompt not yet ranked or skipped. Several raters can rank at
once, each in their own browser with their own name (`?rater=name` in the URL, or typed on the page).

Model text is shown in read-only text boxes, never as HTML, so an answer holding markup or a script shows as text.
The server listens on 127.0.0.1 unless `--host` says otherwise; to serve it to others, put it behind a login with
`--auth_file` (lines of `user:password`, Gradio's `auth`), README "Ranking in the browser".
"""

import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipeline.common.config import UserError, parse_config, run_main
from pipeline.rounds.comparisons import COMPARISONS, read_comparisons
from pipeline.rounds.config import CONFIG_TYPES
from pipeline.rounds.labels import (
    LETTERS,
    append_record,
    check_rater,
    cut_partial_line,
    done_ids,
    now,
    parse_order,
    rater_file,
    read_labels,
    read_rater_file,
    shown_order,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine


@dataclass
class PageArguments:
    host: str = field(
        default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"}
    )
    port: int = field(default=7860, metadata={"help": "port of the page (make label PORT=...)"})
    rater: str | None = field(
        default=None, metadata={"help": "the rater's name, their file's name (make label RATER=...); "
                                "null: asked on the page or taken from ?rater= in the URL"},
    )  # fmt: skip
    auth_file: str | None = field(
        default=None,
        metadata={"help": "file of 'user:password' lines: the page asks for a login (Gradio's auth)"},
    )


def read_auth(path: str | None) -> list[tuple[str, str]] | None:
    if not path:
        return None
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            user, sep, password = line.strip().partition(":")
            if not sep or not user or not password:
                raise UserError(f"{path}: line {number} is not 'user:password'.")
            pairs.append((user, password))
    if not pairs:
        raise UserError(f"{path} holds no 'user:password' line.")
    return pairs


class Round:
    """What the page reads and writes: the round's comparisons and its raters' files."""

    def __init__(self, round_dir: Path, comparisons: dict[str, dict], number: int):
        self.dir, self.comparisons, self.number = round_dir, comparisons, number
        self.ids = list(comparisons)
        self.k = max(len(c["responses"]) for c in comparisons.values())

    def next_prompt(self, rater: str) -> str | None:
        done = done_ids(read_rater_file(rater_file(self.dir, rater)))
        return next((i for i in self.ids if i not in done), None)

    def progress(self, rater: str) -> str:
        labels = read_labels(self.dir)  # every rater's file, this one's among them
        counts = {name: sum(not r.get("skipped") for r in records) for name, records in labels.items()}
        mine, ranked = labels.get(rater, []), counts.get(rater, 0)
        others = ", ".join(f"{name} {n}" for name, n in counts.items() if name != rater)
        return (
            f"**Round {self.number}** · rater **{rater}** · prompt {min(len(mine) + 1, len(self.ids))} of "
            f"{len(self.ids)} · you: {ranked} ranked, {len(mine) - ranked} skipped"
            + (f" · others: {others}" if others else "")
        )


def add_letter(order: str, letter: str) -> str:
    order = order.rstrip()
    return f"{order}{letter}" if not order or order.endswith("=") else f"{order} {letter}"


def build_page(round_: Round, default_rater: str | None):
    import gradio as gr  # the optional extra (.[ui]): only the page needs it

    k = round_.k

    def blank(progress: str, prompt: str, message: str):
        """Outputs with no prompt to rank: no rater name yet, or the rater is done."""
        return (None, progress, gr.update(value=prompt), *[gr.update(value="", visible=False)] * k,
                *[gr.update(visible=False)] * k, gr.update(value=""), gr.update(choices=[], value=[]),
                gr.update(value=""), message)  # fmt: skip

    def show(rater: str | None, message: str = ""):
        """Every output of an action: the rater's next prompt (or the end), the order box emptied."""
        try:
            rater = check_rater(rater)
        except UserError as err:
            return blank("Type your name above and press Enter to start.", "", str(err))
        prompt_id = round_.next_prompt(rater)
        if prompt_id is None:
            return blank(round_.progress(rater), "All prompts of this round are done. Thank you!", message)
        comparison = round_.comparisons[prompt_id]
        shown = shown_order(prompt_id, rater, len(comparison["responses"]))
        letters = LETTERS[: len(shown)]
        state = {"rater": rater, "id": prompt_id, "shown": shown, "started": time.time()}
        answers = [
            gr.update(value=comparison["responses"][shown[i]], visible=True, label=f"Answer {LETTERS[i]}")
            if i < len(shown) else gr.update(value="", visible=False)
            for i in range(k)
        ]  # fmt: skip
        buttons = [gr.update(visible=i < len(shown)) for i in range(k)]
        return (state, round_.progress(rater), gr.update(value=comparison["prompt"].strip()), *answers, *buttons,
                gr.update(value=""), gr.update(choices=list(letters), value=[]), gr.update(value=""), message)  # fmt: skip

    def save(state, order, unusable, note, rater):
        if not state:
            return show(rater)
        if order.strip().lower() == "skip":
            return skip(state, rater)
        shown = state["shown"]
        flagged = [shown[LETTERS.index(letter)] for letter in unusable or []]
        try:
            ranks = parse_order(order, shown, flagged)
        except ValueError as err:
            return (state, gr.update(), gr.update(), *[gr.update()] * (2 * k), gr.update(value=order),
                    gr.update(), gr.update(), f"Not saved: {err}.")  # fmt: skip
        record = {"id": state["id"], "ranks": ranks, "order": order.strip().upper(), "shown": shown,
                  "unusable": sorted(flagged), "note": note.strip(), "rater": state["rater"], "time": now(),
                  "seconds": round(time.time() - state["started"], 1)}  # fmt: skip
        written = append_record(rater_file(round_.dir, state["rater"]), record)
        return show(
            state["rater"], "Saved." if written else "Already saved (in another tab); here is the next."
        )

    def skip(state, rater):
        if state:
            append_record(rater_file(round_.dir, state["rater"]),
                          {"id": state["id"], "skipped": True, "rater": state["rater"], "time": now()})  # fmt: skip
        return show(state["rater"] if state else rater, "Skipped.")

    def start(rater, request: gr.Request):
        from_url = request.query_params.get("rater") if request is not None else None
        rater = from_url or rater
        return (rater or "", *show(rater))

    with gr.Blocks(title=f"Rank round {round_.number}", analytics_enabled=False) as page:
        gr.Markdown(
            "Order the answers **best first**: click their letters in turn, or type them in the order box "
            "(`B A=D C`, `=` ties two) and press **Enter**. Type `skip` (or press Skip) to pass a prompt. "
            "Flag an answer unusable (harmful, broken) and it need not be ordered."
        )
        with gr.Row():
            rater_box = gr.Textbox(value=default_rater or "", label="Rater", elem_id="rater", scale=1)
            progress = gr.Markdown(elem_id="progress")
        prompt_box = gr.Textbox(label="Prompt", interactive=False, elem_id="prompt", lines=1, max_lines=12)
        answer_boxes, letter_buttons = [], []
        for i in range(k):
            with gr.Row(equal_height=True):
                letter_buttons.append(
                    gr.Button(LETTERS[i], elem_id=f"pick-{LETTERS[i]}", scale=0, min_width=60)
                )
                answer_boxes.append(
                    gr.Textbox(
                        label=f"Answer {LETTERS[i]}",
                        interactive=False,
                        elem_id=f"answer-{LETTERS[i]}",
                        lines=1,
                        max_lines=12,
                        scale=9,
                    )  # fmt: skip
                )
        with gr.Row(equal_height=True):
            order_box = gr.Textbox(
                label="Order, best first (Enter saves)", elem_id="order", autofocus=True, scale=3
            )
            tie_button = gr.Button("= tie with previous", elem_id="tie", scale=1)
            clear_button = gr.Button("Clear", elem_id="clear", scale=1)
            save_button = gr.Button("Save ranking", variant="primary", elem_id="save", scale=1)
            skip_button = gr.Button("Skip", elem_id="skip", scale=1)
        with gr.Row():
            unusable = gr.CheckboxGroup(label="Unusable (harmful, broken)", choices=[], elem_id="unusable")
            note = gr.Textbox(label="Note (optional)", elem_id="note")
        message = gr.Markdown(elem_id="message")
        state = gr.State(None)

        outputs = [
            state,
            progress,
            prompt_box,
            *answer_boxes,
            *letter_buttons,
            order_box,
            unusable,
            note,
            message,
        ]
        page.load(start, inputs=[rater_box], outputs=[rater_box, *outputs])
        rater_box.submit(show, inputs=[rater_box], outputs=outputs)
        for letter, button in zip(LETTERS, letter_buttons):
            button.click(partial(add_letter, letter=letter), inputs=order_box, outputs=order_box)
        tie_button.click(
            lambda order: f"{order}=" if order.strip() else order, inputs=order_box, outputs=order_box
        )
        clear_button.click(lambda: "", outputs=order_box)
        order_box.submit(save, inputs=[state, order_box, unusable, note, rater_box], outputs=outputs)
        save_button.click(save, inputs=[state, order_box, unusable, note, rater_box], outputs=outputs)
        skip_button.click(skip, inputs=[state, rater_box], outputs=outputs)
    return page


def main(args=None):
    config, _, page_args = parse_config((*CONFIG_TYPES, PageArguments), args)
    n = config.need_round()
    folder = config.round_dir(n)
    path = folder / COMPARISONS
    if not path.exists():
        raise UserError(f"{path} does not exist: collect round {n} first (make collect ROUND={n}).")
    round_ = Round(folder, read_comparisons(path, n, config.policy_of(n)), n)
    if page_args.rater:
        check_rater(page_args.rater)
    for file in (folder / "labels").glob("*.jsonl"):
        cut_partial_line(file)  # a crash's unfinished last line, before anything is appended after it
    auth = read_auth(page_args.auth_file)
    page = build_page(round_, page_args.rater)
    host = "127.0.0.1" if page_args.host in ("localhost", "") else page_args.host
    shown_host = "127.0.0.1" if host == "0.0.0.0" else host
    query = f"/?rater={page_args.rater}" if page_args.rater else "/"
    print(
        f"Round {n}: {len(round_.ids)} prompts to rank, K={round_.k}; raters' files in {folder / 'labels'}/",
        flush=True,
    )
    print(
        f"Labeling page: http://{shown_host}:{page_args.port}{query}  (Ctrl+C stops it; nothing is lost)",
        flush=True,
    )
    page.queue(default_concurrency_limit=None).launch(
        server_name=host, server_port=page_args.port, auth=auth, quiet=True, ssr_mode=False,
        footer_links=[], show_error=True,
    )  # fmt: skip


if __name__ == "__main__":
    run_main(main)
