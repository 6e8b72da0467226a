"""The example task of recipes/custom-example: unit conversions, answered correctly, politely and briefly.

A question ("How many grams are in 3 kilograms?") has one right number (3000); an answer (" Of course. 3 kilograms
is 3000 grams.") is graded by `labeler_scores`, the stand-in for human raters, on three interpretable terms:

    term     good                                         bad
    answer   +1.5 the last number is the right result,    -1.5 a wrong number or unit, or none
                  every number and unit the question's
    manners  +1   a polite phrase, no rude word            -1   any rude word (0: neither)
    ending   +0.5 a finished sentence, 3..20 words,        -0.5 cut off, rambling or repeating itself
                  nothing repeated

So scores lie in [-3, 3]. Quantities have one digit and every conversion is by a power of ten (the answer is the
quantity with zeros appended): 80 facts, which a ~1M-parameter model learns in minutes (with two-digit quantities
it did not learn to copy them in that time). The raters' answers are of mixed quality (`MIX`), so SFT alone
leaves room for RL. `python -m data_prep.examples.units` writes the recipe's input
files in user-facing formats, deterministic for a seed: ranked answers with the labeler's grades (Parquet, list
columns `question/answers/grades`), SFT demonstrations (CSV, `question/output`), RL and evaluation prompts (JSONL
and CSV, `question`) and a little extra text for the base model (`notes.txt`). Question sets are disjoint, so no
evaluation prompt occurs in any training file.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CONVERSIONS: tuple[tuple[str, str, int], ...] = (  # (from, to, factor), plural unit names
    ("meters", "centimeters", 100), ("centimeters", "millimeters", 10), ("kilometers", "meters", 1000),
    ("meters", "millimeters", 1000), ("kilograms", "grams", 1000), ("grams", "milligrams", 1000),
    ("liters", "milliliters", 1000), ("dollars", "cents", 100), ("decades", "years", 10),
    ("centuries", "years", 100),
)  # fmt: skip
FACTORS = {(a, b): f for a, b, f in CONVERSIONS}
UNITS = frozenset(u for a, b, _ in CONVERSIONS for u in (a, b))
QUANTITIES = range(2, 10)  # one digit, plural units
QUESTIONS = (
    "How many {to} are in {n} {frm}?",
    "Convert {n} {frm} to {to}.",
    "What is {n} {frm} in {to}?",
    "I have {n} {frm}. How many {to} is that?",
    "How many {to} make {n} {frm}?",
    "Can you turn {n} {frm} into {to}?",
)
PREFIXES = ("", "Hi! ", "Quick question. ", "Hello. ", "Hey. ", "Math help. ")

ANSWERS = (
    "{n} {frm} is {r} {to}.",
    "That is {r} {to}.",
    "{n} {frm} equals {r} {to}.",
    "The answer is {r} {to}.",
)
NO_ANSWERS = (
    "I am not sure about that.",
    "That depends on the units.",
    "It is a lot of {to}.",
    "Look it up.",
)
FILLERS = (
    "Units can be tricky.",
    "Many people mix up units.",
    "Always check your units.",
    "Numbers are fun.",
)
POLITE_OPENERS = ("Happy to help.", "Good question.", "Of course.", "Glad you asked.")
POLITE_CLOSERS = ("Hope this helps.", "Glad to help.", "Thanks for asking.")
RUDE_OPENERS = ("Ugh, fine.", "Whatever.", "Obviously.", "Ugh, easy one.")
RUDE_CLOSERS = ("Do not be lazy next time.", "That was a dumb question.", "Ugh.")

# What the labeler looks for, on lower-cased words.
POLITE_PHRASES = ("happy to help", "good question", "of course", "glad you asked", "hope this helps",
                  "glad to help", "thanks for asking", "please")  # fmt: skip
RUDE_WORDS = frozenset({"ugh", "whatever", "obviously", "lazy", "dumb", "stupid", "annoying"})
LABELER_MIN, LABELER_MAX = -3.0, 3.0
GOOD_WORDS = (3, 20)

# How often the raters' demonstrations and ranked answers show each quality.
MIX = {
    "answer": {"right": 0.55, "wrong": 0.3, "none": 0.15},
    "manners": {"polite": 0.4, "neutral": 0.3, "rude": 0.3},
    "ending": {"complete": 0.6, "cut": 0.2, "rambling": 0.2},
}
_WORD = re.compile(r"[a-z']+")
_NUMBER = re.compile(r"\d[\d,]*")


# --- questions and answers ------------------------------------------------------------------------------------


def all_questions() -> list[str]:
    """Every distinct question (10 conversions x 8 quantities x 6 phrasings x 6 greetings = 2880)."""
    return [
        prefix + q.format(n=n, frm=frm, to=to)
        for frm, to, _ in CONVERSIONS
        for n in QUANTITIES
        for q in QUESTIONS
        for prefix in PREFIXES
    ]


def _pick(rng: random.Random, probs: dict[str, float]) -> str:
    return rng.choices(list(probs), weights=list(probs.values()))[0]


def generate_answer(rng: random.Random, question: str, attributes: dict[str, str] | None = None) -> str:
    """One answer to `question` with the given (or freshly drawn, from MIX) attributes."""
    attrs = attributes or {name: _pick(rng, probs) for name, probs in MIX.items()}
    n, frm, to = parse_question(question)
    factor = FACTORS[frm, to]
    if attrs["answer"] == "none":
        sentences = [rng.choice(NO_ANSWERS).format(to=to)]
    else:
        template, shown_n = rng.choice(ANSWERS), n
        if attrs["answer"] == "right":
            r = n * factor
        else:  # the mistakes people make, a third each: a power of ten off, the result's digit miscopied, or the
            # right result after a miscopied question (without the last two a reward model learns to count zeros)
            mistake = rng.randrange(3)
            r = n * factor if mistake == 2 else n * rng.choice([f for f in (10, 100, 1000) if f != factor])
            if mistake == 1:
                r = rng.choice([m for m in QUANTITIES if m != n]) * factor
            if mistake == 2:
                template, shown_n = (
                    rng.choice([a for a in ANSWERS if "{n}" in a]),
                    rng.choice([m for m in QUANTITIES if m != n]),
                )
        sentences = [template.format(n=shown_n, frm=frm, to=to, r=r)]
    if attrs["ending"] == "rambling":  # filler and the answer said twice
        sentences += rng.sample(FILLERS, 2) + [sentences[0]]
    if attrs["manners"] != "neutral":
        openers, closers = (POLITE_OPENERS, POLITE_CLOSERS) if attrs["manners"] == "polite" else (RUDE_OPENERS, RUDE_CLOSERS)  # fmt: skip
        if attrs["ending"] == "cut" or rng.random() < 0.6:  # a cut answer is cut at its end: manners go first
            sentences.insert(0, rng.choice(openers))
        else:
            sentences.append(rng.choice(closers))
    if attrs["ending"] == "cut":
        words = sentences[-1].rstrip(".!?").split()
        sentences[-1] = " ".join(words[: rng.randint(1, max(1, len(words) - 1))])
    return " ".join(sentences)


# --- labeler --------------------------------------------------------------------------------------------------


def parse_question(prompt: str) -> tuple[int, str, str] | None:
    """(quantity, from unit, to unit) asked in the last Human turn of `prompt` (or in `prompt` itself); None when
    it asks no conversion of this task."""
    turn = prompt.rsplit("Human:", 1)[-1].split("Assistant:", 1)[0]
    words = re.findall(r"\d+|[a-z]+", turn.lower())
    for i, word in enumerate(words[:-1]):
        if word.isdigit() and words[i + 1] in UNITS:
            frm = words[i + 1]
            to = [w for w in words if w in UNITS and w != frm]
            if to and (frm, to[0]) in FACTORS:
                return int(word), frm, to[0]
    return None


def explain_score(prompt: str, response: str) -> dict[str, float]:
    """The labeler's score of `response` to `prompt`, term by term, plus their sum under "total"."""
    words = _WORD.findall(response.lower())
    joined = " " + " ".join(words) + " "
    question = parse_question(prompt)
    numbers = [int(n.replace(",", "")) for n in _NUMBER.findall(response)]
    if question is None:
        answer = 0.0  # not a question of this task: nothing to check
    else:
        n, frm, to = question
        result = n * FACTORS[frm, to]
        units = {w for w in words if w in UNITS}
        # the last number is the result, and every number and unit named is the question's own
        right = bool(numbers) and numbers[-1] == result and set(numbers) <= {n, result} and units <= {frm, to}
        answer = 1.5 if right else -1.5

    if any(w in RUDE_WORDS for w in words):
        manners = -1.0
    elif any(f" {phrase} " in joined for phrase in POLITE_PHRASES):
        manners = 1.0
    else:
        manners = 0.0

    stripped = response.strip()
    sentences = [s.strip().lower() for s in re.split(r"[.!?]", stripped) if s.strip()]
    n_words = len(stripped.split())
    finished = stripped[-1:] in (".", "!", "?")
    lo, hi = GOOD_WORDS
    ending = 0.5 if finished and lo <= n_words <= hi and len(sentences) == len(set(sentences)) else -0.5
    return {"answer": answer, "manners": manners, "ending": ending, "total": answer + manners + ending}


def labeler_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Deterministic scores in [LABELER_MIN, LABELER_MAX] = [-3, 3]; higher is better. The `module:function` that
    recipes/custom-example names (eval.yaml `labeler`, ppo.yaml `eval_reward_fn`)."""
    if len(prompts) != len(responses):
        raise ValueError(f"labeler_scores got {len(prompts)} prompts but {len(responses)} responses.")
    return [explain_score(p, r)["total"] for p, r in zip(prompts, responses)]


# --- the example's input files --------------------------------------------------------------------------------

SIZES = {"ranked": 600, "sft": 1300, "rl": 800, "eval": 160}  # distinct questions each, disjoint
ANSWERS_PER_QUESTION = 4


def write_files(output_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the example's input files into `output_dir`; the same seed writes the same files."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions = all_questions()
    random.Random(f"{seed}-split").shuffle(questions)
    pools, start = {}, 0
    for name, n in SIZES.items():
        pools[name], start = questions[start : start + n], start + n

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}-{name}")

    ranked_rng, ranked = rng("ranked"), []
    for q in pools["ranked"]:
        grades: list[float] = []
        while len(set(grades)) < 2:  # K distinct answers, not all graded alike: every row holds a preference
            drawn = (generate_answer(ranked_rng, q) for _ in range(3 * ANSWERS_PER_QUESTION))
            answers = list(dict.fromkeys(drawn))[:ANSWERS_PER_QUESTION]
            grades = (
                labeler_scores([q] * len(answers), answers) if len(answers) == ANSWERS_PER_QUESTION else []
            )
        ranked.append({"question": q, "answers": answers, "grades": grades})
    sft_rng = rng("sft")
    sft = [{"question": q, "output": generate_answer(sft_rng, q)} for q in pools["sft"]]

    files = {"ranked": "ranked.parquet", "sft": "sft.csv", "rl": "rl_prompts.jsonl", "eval": "eval_prompts.csv",
             "notes": "notes.txt"}  # fmt: skip
    paths = {name: out / file for name, file in files.items()}
    pq.write_table(pa.Table.from_pylist(ranked), paths["ranked"], compression="zstd")
    for name, rows in (("sft", sft), ("eval", [{"question": q} for q in pools["eval"]])):
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    paths["rl"].write_text("".join(json.dumps({"question": q}) + "\n" for q in pools["rl"]), encoding="utf-8")
    # Extra text for the base model's corpus (pretrain_text_files): facts about the units, no question of any pool.
    singular = {u: "century" if u == "centuries" else u[:-1] for u in UNITS}
    notes = [f"One {singular[frm]} is {factor} {to}." for frm, to, factor in CONVERSIONS]
    notes += [f"To turn {frm} into {to}, multiply by {factor}." for frm, to, factor in CONVERSIONS]
    notes += list(POLITE_OPENERS + POLITE_CLOSERS + FILLERS)
    paths["notes"].write_text("\n".join(notes) + "\n", encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.examples.units", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output_dir", default="recipes/custom-example/files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_files(args.output_dir, args.seed).values():
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
