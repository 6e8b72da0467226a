"""The built-in task: its labeler scores what it claims to, separates good from bad, and its data is learnable."""

import random
import statistics

import pytest

from data_prep import task

PROMPT = task.format_prompt("Tell me about cats.")


def auc(positives, negatives):
    """Probability that a random positive outscores a random negative (ties count half)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # all four terms at their best
        (" Sure, glad to help. Cats are soft. Many people like cats. Some cats are warm and nice.", 3.0),
        # every term at its worst: off topic, rude, too short, cut off
        (" Ugh, dumb. Dogs are", -3.0),
        # on topic, neutral, complete, right length
        (" Cats are soft. Many people like cats. Some cats are warm and nice.", 2.0),
        # mixes in another topic: topic term 0
        (" Glad to help. Cats are soft. Dogs are big. Many people like cats.", 2.0),
        # repeated sentence: length term -0.5 even though the word count is fine
        (" Glad to help. Cats are soft. Cats are soft. Many people like cats.", 2.0),
        # rambling past 32 words
        (" Glad to help." + " Cats are soft and nice and warm and big." * 4 + " Cats are red.", 2.0),
        # a single-word stutter counts as repetition too
        (" Glad to help. Cats cats cats are soft. Many people like cats.", 2.0),
        # the singular form counts as the topic
        (" Glad to help. A cat is soft. Many people like a cat like that.", 3.0),
    ],
)
def test_labeler_terms(response, expected):
    assert task.labeler_score(PROMPT, response) == expected, task.explain_score(PROMPT, response)


def test_explain_score_sums_to_total():
    parts = task.explain_score(
        PROMPT, " Ugh. Cats are soft. Many people like cats. Some cats are big and red."
    )
    assert parts == {"topic": 1.0, "manners": -1.0, "ending": 0.5, "length": 0.5, "total": 1.0}


@pytest.mark.parametrize(
    "response",
    [
        "",
        " ",
        "!!!",
        " cats" * 500,
        "\x00\ufffd garbage </s> <pad>",
        " \n\nHuman: hi\n\nAssistant: ok",
        "ÄÖÜ ß",
    ],
)
def test_labeler_scores_any_text_within_range(response):
    score = task.labeler_score(PROMPT, response)
    assert isinstance(score, float)
    assert task.LABELER_MIN <= score <= task.LABELER_MAX


def test_labeler_on_prompts_outside_the_task_ignores_topic():
    prompt = task.format_prompt("How do I fix my sink?")
    assert (
        task.explain_score(prompt, " Glad to help. Turn off the water first, then open the pipe.")["topic"]
        == 0.0
    )


def test_topic_is_read_from_the_last_human_turn():
    prompt = "\n\nHuman: Tell me about dogs.\n\nAssistant: Dogs are fun.\n\nHuman: Now tell me about cats.\n\nAssistant:"
    assert task.requested_topics(prompt) == {"cats"}


def test_labeler_scores_checks_lengths():
    assert task.labeler_scores([PROMPT, PROMPT], [" Cats.", " Dogs."]) == [
        task.labeler_score(PROMPT, " Cats."),
        task.labeler_score(PROMPT, " Dogs."),
    ]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        task.labeler_scores([PROMPT, PROMPT], [" Cats."])


def test_labeler_separates_good_from_bad_on_heldout_generated_data():
    """On held-out prompts and a seed no data set uses: every sampled attribute moves the score its way."""
    _, heldout = task.split_prompt_specs(seed=0, heldout_fraction=0.15)
    rng = random.Random(12345)
    best = [
        task.labeler_score(*_text(task.generate_example(rng, rng.choice(heldout), good=True)))
        for _ in range(300)
    ]
    worst = [
        task.labeler_score(*_text(task.generate_example(rng, rng.choice(heldout), good=False)))
        for _ in range(300)
    ]
    assert statistics.fmean(best) == task.LABELER_MAX  # all-good responses are exactly at the maximum
    assert statistics.fmean(worst) < -2.0
    assert auc(best, worst) == 1.0

    mixed = []
    for _ in range(2000):
        prompt, response = task.generate_example(rng, rng.choice(heldout))
        mixed.append((response.attributes, task.labeler_score(prompt, response.text)))
    good_values = {"topic": "on", "manners": "polite", "length": "right", "ending": "complete"}
    for attribute, good in good_values.items():
        pos = [s for a, s in mixed if a[attribute] == good]
        neg = [s for a, s in mixed if a[attribute] != good]
        assert auc(pos, neg) > 0.65, attribute  # measured 0.70..0.84


def _text(example):
    prompt, response = example
    return prompt, response.text


def test_mixed_quality_leaves_room_for_rl_but_shows_good_behaviour():
    train, _ = task.split_prompt_specs(seed=0, heldout_fraction=0.15)
    rng = random.Random(7)
    scores = [task.labeler_score(*_text(task.generate_example(rng, rng.choice(train)))) for _ in range(2000)]
    mean = statistics.fmean(scores)
    assert 0.3 < mean < 1.5 < task.LABELER_MAX  # SFT imitates this: well below the best possible score
    at_max = sum(s == task.LABELER_MAX for s in scores) / len(scores)
    assert 0.05 < at_max < 0.3  # the best responses occur, so RL can find and upweight them


def test_prompt_split_is_disjoint_and_covers_every_topic():
    train, heldout = task.split_prompt_specs(seed=0, heldout_fraction=0.15)
    assert not {s.text for s in train} & {s.text for s in heldout}
    assert len(train) + len(heldout) == len(task.all_prompt_specs()) == 960
    assert {s.topic for s in heldout} == {s.topic for s in train} == set(task.TOPICS)
    assert task.split_prompt_specs(seed=0, heldout_fraction=0.15) == (train, heldout)
    assert task.split_prompt_specs(seed=1, heldout_fraction=0.15)[1] != heldout


def test_sequences_fit_64_tokens_of_a_small_bpe_tokenizer():
    """A byte-level BPE with a 1000-token vocabulary trained on the task keeps prompt+response within 64 tokens."""
    from tokenizers import ByteLevelBPETokenizer

    train, _ = task.split_prompt_specs(seed=0, heldout_fraction=0.15)
    rng = random.Random(0)
    texts = [p + r.text for p, r in (task.generate_example(rng, rng.choice(train)) for _ in range(4000))]
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(texts, vocab_size=1000, show_progress=False)
    longest = max(len(e.ids) for e in tokenizer.encode_batch(texts))
    assert longest <= 64, longest


def test_demonstrations_are_better_than_the_pretraining_corpus():
    """SFT must have something to teach a base model pretrained on the corpus (InstructGPT's premise)."""
    rng = random.Random(11)
    train, _ = task.split_prompt_specs(0, 0.15)

    def mean_score(mix):
        examples = [task.generate_example(rng, rng.choice(train), mix=mix) for _ in range(2000)]
        return sum(task.labeler_score(p, r.text) for p, r in examples) / len(examples)

    demo, pretrain = mean_score("demo"), mean_score("pretrain")
    assert demo - pretrain > 1.0, (demo, pretrain)
    assert demo < task.LABELER_MAX - 1.5  # and the demonstrations still leave room for RL
