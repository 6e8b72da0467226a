"""Driving the labeling page (pipeline/rounds/label.py) in a real browser: Debian's Chromium through the system's
chromedriver (nothing downloaded), against the real server as its own process. Used by tests/test_label_page.py
and tests/benchmarks/bench_label.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from pipeline.rounds.comparisons import COMPARISONS, prompt_id, write_jsonl
from pipeline.rounds.labels import LETTERS

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
POLICY = "runs/x/sft"


def have_browser() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def start_browser() -> webdriver.Chrome:
    """Headless Chromium with no background traffic (this machine's network is closed; nothing is fetched)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1300"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def write_round(folder: Path, n_prompts: int, special: str | None = None) -> tuple[Path, list[dict]]:
    """A recipe's rounds.yaml and round 1's comparisons: K=4 answers per prompt, but 3 on the last (collecting
    merges identical answers, so K varies), `special` as the first prompt's third answer. No model needed."""
    rows = []
    for i in range(n_prompts):
        prompt = f"\n\nHuman: Question {i}: how do I bake bread?\n\nAssistant:"
        answers = [
            f" Answer {j} of question {i}: {'knead ' * j}then bake."
            for j in range(3 if i == n_prompts - 1 else 4)
        ]
        if special and i == 0:
            answers[2] = special
        rows.append({"id": prompt_id(prompt), "prompt": prompt, "responses": answers, "ended": [True] * len(answers),
                     "round": 1, "policy": {"path": POLICY, "fingerprint": "f"}, "sampling": {"temperature": 0.7},
                     "seed": 0})  # fmt: skip
    write_jsonl(folder / "rounds" / "1" / COMPARISONS, rows)
    config = folder / "rounds.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(folder / "rounds"), "sft_model_path": POLICY,
                                      "prompts_path": "p", "labeler": "data_prep.task:labeler_scores"}))  # fmt: skip
    return config, rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m pipeline.rounds.label` as its own process (killed for real in the restart test). Every one
    started is in `Server.started`, so a failed test's server can be stopped too (`stop_all`)."""

    started: list[Server] = []

    def __init__(self, config: Path, port: int, *extra: str):
        Server.started.append(self)
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.rounds.label", "--config", str(config), "--round", "1", "--port",
             str(port), *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        first_lines = [self.process.stdout.readline() for _ in range(2)]
        assert first_lines[1].startswith(f"Labeling page: {self.url}/"), first_lines
        for _ in range(300):
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.url} did not answer")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    @classmethod
    def stop_all(cls) -> None:
        for server in cls.started:
            if server.process.poll() is None:
                server.kill()
        cls.started.clear()


def wait_for(condition, timeout: float = 15.0):
    end = time.time() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # the page is re-rendering
            if time.time() > end:
                raise
        if time.time() > end:
            raise TimeoutError("the page did not get there")
        time.sleep(0.05)


class Page:
    def __init__(self, driver, url: str, ready: str = "Round 1"):
        self.driver = driver
        driver.get(url)
        self.handle = driver.current_window_handle
        wait_for(lambda: self.progress().startswith(ready))

    def value(self, elem_id: str) -> str:
        return self.driver.find_element(
            By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input"
        ).get_attribute("value")

    def progress(self) -> str:
        return self.driver.find_element(By.ID, "progress").text

    def shown(self, rows_by_prompt: dict[str, dict]) -> tuple[dict, list[int]]:
        """The comparison on screen and the collected index of the answer shown as A, B, C, D. Read until the prompt
        and every answer belong to one comparison: the page updates its boxes one after another, so a read in
        between can see the new prompt beside the last prompt's answers."""

        def read():
            row = rows_by_prompt[self.value("prompt")]
            texts = [self.value(f"answer-{letter}") for letter in LETTERS[: len(row["responses"])]]
            return row, [row["responses"].index(t) for t in texts]

        return wait_for(read)

    def after(self, action) -> None:
        """Do something that saves, and wait for the next prompt (or the end) to be on screen and the page settled:
        the order box emptied too (the page updates its boxes one after another; keys typed before the box is
        emptied would be wiped)."""
        before = self.progress()
        action()
        wait_for(lambda: self.progress() != before and self.value("order") == "")

    def click(self, elem_id: str) -> None:
        self.driver.find_element(By.ID, elem_id).click()

    def rank_by_clicks(self, order: str) -> None:
        """'B A=D C': the letter buttons, the tie button, then Save."""
        for char in order.replace(" ", ""):
            self.click("tie" if char == "=" else f"pick-{char}")
            wait_for(lambda char=char: self.value("order").replace(" ", "").endswith(char))
        self.after(lambda: self.click("save"))

    def rank_by_keys(self, order: str) -> None:
        box = self.driver.find_element(By.CSS_SELECTOR, "#order textarea, #order input")
        self.after(lambda: box.send_keys(order + Keys.ENTER))

    def flag(self, letter: str, note: str) -> None:
        self.driver.find_element(
            By.XPATH, f"//*[@id='unusable']//label[normalize-space()='{letter}']//input"
        ).click()
        self.driver.find_element(By.CSS_SELECTOR, "#note textarea, #note input").send_keys(note)
