"""Write the bundled preference pairs: data_recipes/samples/preference_*.jsonl.

    python -m data_recipes.samples.make_preference      # rewrites the three files

Deterministic (seeded). Three sources in both pair formats, made up here (no upstream licence):

* ``preference_reasoning.jsonl`` (TRL prompt/chosen/rejected): arithmetic with worked reasoning;
  chosen reasons correctly, rejected makes a slip and answers wrongly;
* ``preference_plain.jsonl`` (full chosen/rejected conversations, UltraFeedback-binarized style):
  capitals and definitions, some multi-turn; plus a few broken rows that the build drops and counts
  (identical sides, prompts that differ, a missing side, a string prompt, a side ending on a user turn);
* ``preference_tools.jsonl`` (prompt format with ``tools``): chosen calls the weather tool with the city
  asked about and answers from the result; rejected calls it for the wrong city.
"""

from __future__ import annotations

import json
import random

from data_recipes.samples.make_samples import CAPITALS, CITIES, CONDITIONS, TOOLS
from data_recipes.samples.make_samples import _write as write_rows  # one JSONL writer for the samples


def reasoning_pairs(rng: random.Random, n: int = 24) -> list[dict]:
    rows = []
    for _ in range(n):
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        wrong = a * b + rng.choice([-10, 10, -1, 1, 100])
        good = f"{a} x {b} = {a} x {b // 10 * 10} + {a} x {b % 10} = {a * (b // 10 * 10)} + {a * (b % 10)} = {a * b}."
        bad = f"{a} x {b} is about {wrong}, close enough."
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a} times {b}?"}],
            "chosen": [{"role": "assistant", "reasoning_content": good, "content": f"{a} x {b} = {a * b}."}],
            "rejected": [{"role": "assistant", "reasoning_content": bad, "content": f"{a} x {b} = {wrong}."}],
        })  # fmt: skip
    return rows


def plain_pairs(rng: random.Random) -> list[dict]:
    rows = []
    countries = list(CAPITALS)
    for country in countries:
        wrong = rng.choice([c for c in CAPITALS.values() if c != CAPITALS[country]])
        prompt = [{"role": "user", "content": f"What is the capital of {country}?"}]
        if rng.random() < 0.4:  # multi-turn: an earlier exchange shared by both sides
            prompt = [
                {"role": "system", "content": "You answer geography questions in one sentence."},
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello! Ask me about any country."},
                *prompt,
            ]
        good = {"role": "assistant", "content": f"The capital of {country} is {CAPITALS[country]}."}
        bad = {"role": "assistant", "content": f"The capital of {country} is {wrong}."}
        rows.append({"chosen": [*prompt, good], "rejected": [*prompt, bad]})
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = {"role": "assistant", "content": "Paris."}
    rows += [
        {"chosen": [*question, answer], "rejected": [*question, answer]},  # identical_sides
        {"chosen": [*question, answer],  # prompt_mismatch
         "rejected": [{"role": "user", "content": "What is the capital of Peru?"}, {"role": "assistant", "content": "Lima."}]},
        {"chosen": [*question, answer]},  # missing_side
        {"prompt": "What is the capital of France?", "chosen": [answer], "rejected": [{"role": "assistant", "content": "Rome."}]},  # bad_prompt
        {"prompt": question, "chosen": [answer], "rejected": [answer, {"role": "user", "content": "Sure?"}]},  # side_ends_on_user
    ]  # fmt: skip
    return rows


def tool_pairs(rng: random.Random, n: int = 16) -> list[dict]:
    rows = []
    cities = list(CITIES)
    for k in range(n):
        city = cities[k % len(cities)]
        other = rng.choice([c for c in cities if c != city])
        prompt = [{"role": "user", "content": f"What's the weather in {city} right now?"}]

        def reply(at: str, tag: str) -> list[dict]:
            cond = rng.choice(CONDITIONS)
            call = {"id": f"call_{tag}", "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": at, "unit": "celsius"})}}  # fmt: skip
            result = json.dumps({"city": at, "temp_c": CITIES[at], "condition": cond})
            return [
                {"role": "assistant", "reasoning_content": f"I should look up the weather in {at}.",
                 "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"call_{tag}", "content": result},
                {"role": "assistant", "content": f"It is {CITIES[at]} °C and {cond} in {at}."},
            ]  # fmt: skip

        rows.append(
            {"prompt": prompt, "chosen": reply(city, "a"), "rejected": reply(other, "b"), "tools": TOOLS[:1]}
        )
    return rows


def main() -> None:
    rng = random.Random(11)
    files = {"reasoning": reasoning_pairs, "plain": plain_pairs, "tools": tool_pairs}
    for name, make in files.items():
        write_rows(f"preference_{name}.jsonl", make(rng))


if __name__ == "__main__":
    main()
