"""The built-in synthetic dialogue task and its programmatic labeler (the stand-in for human raters).

A prompt asks about one topic ("\\n\\nHuman: Tell me about cats.\\n\\nAssistant:"); a response (" Sure, glad to
help. Cats are soft. Many people like cats.") varies in quality along four attributes, each scored by one
interpretable term of `labeler_score`:

    term     good                                   bad
    topic    +1  mentions the asked topic only       -1  never mentions it (0: also mentions other topics)
    manners  +1  polite phrase, no rude word         -1  any rude word (0: neither)
    ending   +0.5 ends with a finished sentence      -0.5 cut off mid-sentence (no final . ! ?)
    length   +0.5 8..32 words, nothing repeated      -0.5 too short, rambling, or a repeated sentence/word

So scores lie in [-3, 3] (LABELER_MIN, LABELER_MAX); the labeler scores any text, including the garbage a
policy samples. The vocabulary is small and regular on purpose: a ~1M-parameter Llama trained from scratch on
CPU must learn the language in minutes, and PPO must be able to raise the score over SFT.

Generation is deterministic given a `random.Random`. Each generated response also carries the attributes it was
sampled with (`Response.attributes`), which the tests use to check that the labeler separates good from bad.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# --- vocabulary --------------------------------------------------------------------------------------------

# Plural nouns with a regular singular (drop the final "s"), so "are" fits every template.
TOPICS: tuple[str, ...] = (
    "cats", "dogs", "birds", "ducks", "horses", "frogs", "bees", "apples", "bananas", "grapes",
    "lemons", "cakes", "cookies", "trees", "flowers", "rivers", "mountains", "clouds", "stars", "boats",
    "trains", "cars", "bikes", "books", "songs", "games", "shoes", "hats", "rocks", "shells",
)  # fmt: skip

ADJECTIVES: tuple[str, ...] = (
    "nice", "small", "big", "pretty", "fun", "soft", "bright", "quiet", "old", "green", "red", "warm", "cool",
)  # fmt: skip

REQUEST_TEMPLATES: tuple[str, ...] = (
    "Tell me about {t}.",
    "What can you tell me about {t}?",
    "Can you describe {t}?",
    "I want to learn about {t}.",
    "Say something about {t}.",
    "What do you think of {t}?",
    "Write a few lines about {t}.",
    "Do you like {t}?",
)
REQUEST_PREFIXES: tuple[str, ...] = ("", "Hi! ", "Hello. ", "Quick question. ")

# Body sentences about a topic ({T} capitalised topic, {t} topic, {a}/{b} adjectives): 3 to 6 words each.
FACT_TEMPLATES: tuple[str, ...] = (
    "{T} are {a}.",
    "{T} can be very {a}.",
    "Many people like {t}.",
    "Some {t} are {a} and {b}.",
    "I think {t} are {a}.",
    "You can see {t} everywhere.",
    "Kids like to draw {t}.",
    "{T} come in many colors.",
)

POLITE_OPENERS: tuple[str, ...] = ("Sure, glad to help.", "Happy to help.", "Great question.", "Of course!")
POLITE_CLOSERS: tuple[str, ...] = ("Hope this helps.", "Glad to help.", "Thanks for asking.")
RUDE_OPENERS: tuple[str, ...] = ("Ugh, dumb question.", "Whatever.", "What a stupid question.", "Ugh, fine.")
RUDE_CLOSERS: tuple[str, ...] = ("Now stop being annoying.", "That was a dumb question.", "Ugh.")

# What the labeler looks for. Phrases are matched on lower-cased words, so punctuation never matters.
POLITE_PHRASES: tuple[str, ...] = (
    "glad to help", "happy to help", "great question", "of course", "hope this helps", "thanks for asking",
    "please",
)  # fmt: skip
RUDE_WORDS: frozenset[str] = frozenset({"ugh", "dumb", "stupid", "whatever", "annoying", "idiot"})

LABELER_MIN, LABELER_MAX = -3.0, 3.0
GOOD_LENGTH_WORDS = (8, 32)  # inclusive range of words for the +0.5 length term

# Sampling probabilities of each attribute's values, per source of text. "demo" is the SFT demonstrations and
# the K responses ranked into preference pairs: a good value common enough that the SFT policy sometimes shows
# it, a bad one common enough that RL has room to improve. "pretrain" is the base model's corpus, the stand-in
# for web text: worse on average than the demonstrations, as in InstructGPT, so SFT has something to teach.
MIXES: dict[str, dict[str, dict[str, float]]] = {
    "demo": {
        "topic": {"on": 0.6, "off": 0.25, "mixed": 0.15},
        "manners": {"polite": 0.5, "neutral": 0.25, "rude": 0.25},
        "length": {"right": 0.6, "short": 0.2, "rambling": 0.2},
        "ending": {"complete": 0.65, "cut": 0.35},
    },
    "pretrain": {
        "topic": {"on": 0.3, "off": 0.5, "mixed": 0.2},
        "manners": {"polite": 0.15, "neutral": 0.45, "rude": 0.4},
        "length": {"right": 0.3, "short": 0.35, "rambling": 0.35},
        "ending": {"complete": 0.35, "cut": 0.65},
    },
}

_WORD = re.compile(r"[a-z']+")
_SENTENCE_END = re.compile(r"[.!?]")


# --- prompts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSpec:
    """One (prefix, template, topic) combination; `text` is the prompt in the canonical HH format."""

    prefix: str
    template: str
    topic: str

    @property
    def request(self) -> str:
        return self.prefix + self.template.format(t=self.topic)

    @property
    def text(self) -> str:
        return format_prompt(self.request)


def format_prompt(request: str) -> str:
    return f"\n\nHuman: {request}\n\nAssistant:"


def all_prompt_specs() -> list[PromptSpec]:
    """Every distinct prompt of the task (30 topics x 8 templates x 4 prefixes = 960), in a fixed order."""
    return [PromptSpec(p, r, t) for t in TOPICS for r in REQUEST_TEMPLATES for p in REQUEST_PREFIXES]


def split_prompt_specs(seed: int, heldout_fraction: float) -> tuple[list[PromptSpec], list[PromptSpec]]:
    """Split the prompt combinations into (train, held-out), disjoint, every topic in both halves.

    Held-out prompts (evaluation prompts, held-out preference pairs, SFT test split) never occur verbatim in
    the training data, so evaluation measures generalisation to new request/topic combinations.
    """
    rng = random.Random(f"split-{seed}")
    train, heldout = [], []
    for topic in TOPICS:
        specs = [s for s in all_prompt_specs() if s.topic == topic]
        rng.shuffle(specs)
        n_heldout = max(1, round(heldout_fraction * len(specs)))
        heldout += specs[:n_heldout]
        train += specs[n_heldout:]
    return train, heldout


# --- responses ---------------------------------------------------------------------------------------------


@dataclass
class Response:
    text: str  # canonical completion: a leading space, no EOS
    attributes: dict[str, str] = field(default_factory=dict)


def _facts(rng: random.Random, subjects: Sequence[str]) -> list[str]:
    """One sentence per subject, from distinct templates (so only rambling answers repeat themselves)."""
    templates = rng.sample(FACT_TEMPLATES, len(subjects))
    facts = []
    for template, topic in zip(templates, subjects):
        a, b = rng.sample(ADJECTIVES, 2)
        facts.append(template.format(T=topic.capitalize(), t=topic, a=a, b=b))
    return facts


def _pick(rng: random.Random, probs: dict[str, float]) -> str:
    return rng.choices(list(probs), weights=list(probs.values()))[0]


def sample_attributes(rng: random.Random, good: bool | None = None, mix: str = "demo") -> dict[str, str]:
    """Attributes of one response: all good, all bad, or (good=None) drawn from one of `MIXES`."""
    if good is True:
        return {"topic": "on", "manners": "polite", "length": "right", "ending": "complete"}
    if good is False:
        return {
            "topic": rng.choice(["off", "mixed"]),
            "manners": "rude",
            "length": rng.choice(["short", "rambling"]),
            "ending": "cut",
        }
    return {attribute: _pick(rng, probs) for attribute, probs in MIXES[mix].items()}


def generate_response(rng: random.Random, topic: str, attributes: dict[str, str] | None = None) -> Response:
    """Sample one response to a prompt about `topic` with the given (or freshly sampled) attributes."""
    attrs = dict(attributes) if attributes else sample_attributes(rng)
    other = rng.choice([t for t in TOPICS if t != topic])

    n_facts = {"short": 1, "right": 3, "rambling": 5}[attrs["length"]]
    if attrs["topic"] == "on":
        subjects = [topic] * n_facts
    elif attrs["topic"] == "off" or n_facts == 1:
        subjects = [other] * n_facts
    else:  # mixed: starts on topic, drifts to another one
        subjects = [topic] + [other] * (n_facts - 1)
    if attrs["length"] == "short":  # a short answer is one bare 3-word fact
        a = rng.choice(ADJECTIVES)
        facts = [f"{subjects[0].capitalize()} are {a}."]
    else:
        facts = _facts(rng, subjects)
    if attrs["length"] == "rambling":  # rambling repeats itself
        facts[rng.randrange(1, len(facts))] = facts[0]

    sentences = list(facts)
    if attrs["manners"] != "neutral":
        polite = attrs["manners"] == "polite"
        openers, closers = (POLITE_OPENERS, POLITE_CLOSERS) if polite else (RUDE_OPENERS, RUDE_CLOSERS)
        # A cut-off response is cut inside its last fact, so its manners phrase goes first.
        if attrs["ending"] == "cut" or rng.random() < 0.6:
            sentences.insert(0, rng.choice(openers))
        else:
            sentences.append(rng.choice(closers))
    if attrs["ending"] == "cut":  # keep 1..n-1 words of the last fact, no final punctuation
        words = sentences[-1].rstrip(".!?").split()
        sentences[-1] = " ".join(words[: rng.randint(1, len(words) - 1)])
    return Response(" " + " ".join(sentences), attrs)


def generate_example(
    rng: random.Random, spec: PromptSpec, good: bool | None = None, mix: str = "demo"
) -> tuple[str, Response]:
    return spec.text, generate_response(rng, spec.topic, sample_attributes(rng, good, mix))


# --- labeler -----------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _topics_in(words: Sequence[str]) -> set[str]:
    found = set()
    for w in words:
        if w in _TOPIC_FORMS:
            found.add(_TOPIC_FORMS[w])
    return found


_TOPIC_FORMS = {form: t for t in TOPICS for form in (t, t[:-1])}


def requested_topics(prompt: str) -> set[str]:
    """Topics the last Human turn of `prompt` asks about (empty for prompts outside the built-in task)."""
    last_turn = prompt.rsplit("Human:", 1)[-1].split("Assistant:", 1)[0]
    return _topics_in(_words(last_turn))


def explain_score(prompt: str, response: str) -> dict[str, float]:
    """The labeler's score of `response` to `prompt`, term by term, plus their sum under "total"."""
    words = _words(response)
    joined = " " + " ".join(words) + " "

    asked = requested_topics(prompt)
    mentioned = _topics_in(words)
    if not asked:
        topic = 0.0  # a prompt from outside the task: no topic to judge
    elif not asked & mentioned:
        topic = -1.0
    elif mentioned - asked:
        topic = 0.0
    else:
        topic = 1.0

    if any(w in RUDE_WORDS for w in words):
        manners = -1.0
    elif any(f" {phrase} " in joined for phrase in POLITE_PHRASES):
        manners = 1.0
    else:
        manners = 0.0

    stripped = response.strip()
    ending = 0.5 if stripped and stripped[-1] in ".!?" and words else -0.5

    sentences = [" ".join(_words(s)) for s in _SENTENCE_END.split(response)]
    sentences = [s for s in sentences if s]
    repeated_sentence = len(sentences) != len(set(sentences))
    stutter = any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2))
    lo, hi = GOOD_LENGTH_WORDS
    length = 0.5 if lo <= len(words) <= hi and not repeated_sentence and not stutter else -0.5

    total = topic + manners + ending + length
    return {"topic": topic, "manners": manners, "ending": ending, "length": length, "total": total}


def labeler_score(prompt: str, response: str) -> float:
    """Deterministic score in [LABELER_MIN, LABELER_MAX] = [-3, 3] of `response` to `prompt`; higher is better."""
    return explain_score(prompt, response)["total"]


def labeler_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    if len(prompts) != len(responses):
        raise ValueError(f"labeler_scores got {len(prompts)} prompts but {len(responses)} responses.")
    return [labeler_score(p, r) for p, r in zip(prompts, responses)]
