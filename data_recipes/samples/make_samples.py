"""Write the bundled sample data: ~300 synthetic conversations, all five recipes, all three formats.

    python -m data_recipes.samples.make_samples      # rewrites data_recipes/samples/*.jsonl

Deterministic (seeded), so the committed files are exactly what this script writes. The content is
made up here (arithmetic with worked reasoning, weather / calculator / currency tools, JSON
extraction against a schema, long step-by-step sums for length control); it carries no licence of
any upstream dataset. ``configs/data/sample.yaml`` builds these files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent
CITIES = {
    "Paris": 18,
    "Oslo": 7,
    "Cairo": 31,
    "Lima": 22,
    "Tokyo": 16,
    "Denver": 12,
    "Perth": 25,
    "Dublin": 11,
}
CONDITIONS = ["sunny", "cloudy", "light rain", "windy", "clear", "overcast"]
CAPITALS = {"France": "Paris", "Norway": "Oslo", "Egypt": "Cairo", "Peru": "Lima", "Japan": "Tokyo",
            "Kenya": "Nairobi", "Chile": "Santiago", "Canada": "Ottawa", "Spain": "Madrid", "Vietnam": "Hanoi"}  # fmt: skip
WORDS = [
    "hermes",
    "packing",
    "tokenizer",
    "gradient",
    "mixture",
    "schema",
    "reasoning",
    "template",
    "sampler",
    "optimizer",
    "checkpoint",
    "attention",
    "embedding",
    "dataset",
    "manifest",
    "budget",
    "position",
    "sequence",
    "validation",
    "dedup",
]
RATES = {("USD", "EUR"): 0.92, ("EUR", "JPY"): 162.5, ("GBP", "USD"): 1.27, ("USD", "CAD"): 1.36}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["amount", "from", "to"]}}},
]  # fmt: skip


def _write(name: str, rows: list[dict]) -> None:
    with open(OUT / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _multiply(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    tens, ones = b // 10 * 10, b % 10
    reasoning = (f"I need {a} × {b}. Split {b} into {tens} + {ones}.\n{a} × {tens} = {a * tens}.\n"
                 f"{a} × {ones} = {a * ones}.\nAdding: {a * tens} + {a * ones} = {a * b}.")  # fmt: skip
    return f"What is {a} × {b}?", reasoning, f"{a} × {b} = {a * b}."


def _prime(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(30, 400)
    divisor = next((d for d in range(2, int(n**0.5) + 1) if n % d == 0), None)
    if divisor is None:
        limit = int(n**0.5)
        reasoning = f"Check divisors of {n} up to √{n} ≈ {limit}. None of 2..{limit} divides {n} evenly."
        return f"Is {n} a prime number?", reasoning, f"Yes, {n} is prime."
    reasoning = (
        f"Try small divisors of {n}. {n} ÷ {divisor} = {n // divisor} exactly, so {n} has a factor {divisor}."
    )
    return f"Is {n} a prime number?", reasoning, f"No. {n} = {divisor} × {n // divisor}."


def _subtract_days(rng: random.Random) -> tuple[str, str, str]:
    h = rng.randint(30, 200)
    days, rest = divmod(h, 24)
    reasoning = f"A day has 24 hours. {h} ÷ 24 = {days} remainder {rest}, because 24 × {days} = {24 * days}."
    return (
        f"How many full days and hours are in {h} hours?",
        reasoning,
        f"{h} hours is {days} days and {rest} hours.",
    )


def reasoning_rows(rng: random.Random) -> list[dict]:
    makers = [_multiply, _prime, _subtract_days]
    rows = []
    for i in range(80):
        question, reasoning, answer = makers[i % 3](rng)
        if i % 4 == 3:  # ShareGPT with an inline think block
            rows.append({"conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": f"<think>\n{reasoning}\n</think>\n{answer}"}]})  # fmt: skip
            continue
        messages = [{"role": "user", "content": question}]
        if i % 5 == 0:
            messages.insert(0, {"role": "system", "content": "Answer concisely and show the final result."})
        if i % 7 == 0:  # multi-turn: an earlier reasoning turn (stripped under `last`)
            q0, r0, a0 = _multiply(rng)
            messages[-1:-1] = [{"role": "user", "content": q0},
                               {"role": "assistant", "reasoning_content": r0, "content": a0}]  # fmt: skip
        messages.append({"role": "assistant", "reasoning_content": reasoning, "content": answer})
        rows.append({"messages": messages})
    return rows


def plain_rows(rng: random.Random) -> list[dict]:
    rows = []
    countries = list(CAPITALS)
    for i in range(60):
        country = countries[i % len(countries)]
        if i % 3 == 0:
            km = rng.randint(3, 500)
            turns = [{"from": "human", "value": f"Convert {km} km to miles."},
                     {"from": "gpt", "value": f"{km} km is about {km * 0.621371:.1f} miles."}]  # fmt: skip
        elif i % 3 == 1:
            ask = [
                "What is the capital of {}?",
                "Name the capital city of {}.",
                "Which city is the capital of {}?",
            ]
            turns = [{"from": "human", "value": ask[i // 20].format(country)},
                     {"from": "gpt", "value": f"The capital of {country} is {CAPITALS[country]}."}]  # fmt: skip
        else:
            word = WORDS[i // 3]
            turns = [{"from": "human", "value": f"Spell '{word}' backwards."},
                     {"from": "gpt", "value": f"'{word}' backwards is '{word[::-1]}'."},
                     {"from": "human", "value": "How many letters is that?"},
                     {"from": "gpt", "value": f"It has {len(word)} letters."}]  # fmt: skip
        if i % 4 == 0:
            turns.insert(0, {"from": "system", "value": "You are a concise assistant."})
        rows.append({"conversations": turns})
    return rows


def _call(city: str) -> str:
    return (
        "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": {"city": city}}) + "\n</tool_call>"
    )


def _response(result: dict) -> str:
    return "<tool_response>\n" + json.dumps(result) + "\n</tool_response>"


def _weather(city: str, rng: random.Random) -> dict:
    return {"city": city, "temperature_c": CITIES[city], "condition": rng.choice(CONDITIONS)}


def hermes_fc_rows(rng: random.Random) -> list[dict]:
    system = ("You are a function calling AI model. You are provided with function signatures within <tools> "
              "</tools> XML tags.\n<tools>\n" + json.dumps(TOOLS) + "\n</tools>\nFor each function call return "
              "a json object with function name and arguments within <tool_call> </tool_call> XML tags.")  # fmt: skip
    rows = []
    cities = list(CITIES)
    for i in range(50):
        a, b = cities[i % len(cities)], cities[(i + 3) % len(cities)]
        wa, wb = _weather(a, rng), _weather(b, rng)
        if i % 3 == 0:  # one call, then the answer
            turns = [{"from": "human", "value": f"What's the weather in {a}?"},
                     {"from": "gpt", "value": _call(a)},
                     {"from": "tool", "value": _response(wa)},
                     {"from": "gpt", "value": f"It is {wa['temperature_c']} °C and {wa['condition']} in {a}."}]  # fmt: skip
        elif i % 3 == 1:  # reasoning, two parallel calls
            turns = [{"from": "human", "value": f"Is it warmer in {a} or {b} right now?"},
                     {"from": "gpt", "value": f"<think>\nI need both temperatures, so I call get_weather twice.\n</think>\n{_call(a)}\n{_call(b)}"},
                     {"from": "tool", "value": _response(wa) + "\n" + _response(wb)},
                     {"from": "gpt", "value": f"{a if wa['temperature_c'] >= wb['temperature_c'] else b} is warmer "
                                              f"({wa['temperature_c']} °C vs {wb['temperature_c']} °C)."}]  # fmt: skip
        else:  # interleaved: call and result inside the reasoning block
            turns = [{"from": "human", "value": f"Should I take a coat in {a}?"},
                     {"from": "gpt", "value": f"<think>\nLet me check the weather.\n{_call(a)}\n{_response(wa)}\n"
                                              f"It is {wa['temperature_c']} °C.\n</think>\n"
                                              + ("Yes, take a coat." if wa["temperature_c"] < 15 else "No, it is mild enough.")}]  # fmt: skip
        rows.append({"conversations": [{"from": "system", "value": system}, *turns]})
    return rows


def openai_tool_rows(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(30):
        if i % 2 == 0:
            x, y = rng.randint(100, 999), rng.randint(2, 40)
            name, args, result = "calculator", {"expression": f"{x} * {y}"}, {"result": x * y}
            question, answer = f"Use the calculator: what is {x} times {y}?", f"{x} × {y} = {x * y}."
        else:
            (src, dst), rate = rng.choice(list(RATES.items()))
            amount = rng.randint(5, 900)
            name, args = "convert_currency", {"amount": amount, "from": src, "to": dst}
            result = {"converted": round(amount * rate, 2), "currency": dst}
            question, answer = (
                f"Convert {amount} {src} to {dst}.",
                f"{amount} {src} is {result['converted']} {dst}.",
            )
        call_id = f"call_{i:03d}"
        args_field = json.dumps(args) if i % 4 < 2 else args  # arguments as a JSON string or a dict
        rows.append({
            "tools": TOOLS,
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": args_field}}]},
                {"role": "tool", "tool_call_id": call_id, "name": name, "content": json.dumps(result)},
                {"role": "assistant", "content": answer},
            ],
        })  # fmt: skip
    return rows


PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "city": {"type": "string"}},
    "required": ["name", "age", "city"], "additionalProperties": False,
}  # fmt: skip
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1},
                   "express": {"type": "boolean"}},
    "required": ["item", "quantity", "express"],
}  # fmt: skip


def json_schema_rows(rng: random.Random) -> list[dict]:
    names = ["Ada", "Bram", "Chidi", "Dana", "Emil", "Farah", "Goro", "Hana"]
    items = ["notebook", "kettle", "bicycle lamp", "desk chair", "headphones"]
    rows = []
    for i in range(40):
        if i % 2 == 0:
            person = {
                "name": names[i % len(names)],
                "age": rng.randint(19, 80),
                "city": rng.choice(list(CITIES)),
            }
            text = f"{person['name']} is {person['age']} years old and lives in {person['city']}."
            schema, answer = PERSON_SCHEMA, person
        else:
            order = {"item": rng.choice(items), "quantity": rng.randint(1, 9), "express": bool(i % 3)}
            text = f"Please send {order['quantity']} x {order['item']}" + (
                ", express shipping." if order["express"] else "."
            )
            schema, answer = ORDER_SCHEMA, order
        schema_text = json.dumps(schema)
        answer_text = json.dumps(answer)
        if i % 4 < 2:  # schema in the user turn, answer fenced
            messages = [{"role": "user", "content": f"Extract JSON matching this schema:\n```json\n{schema_text}\n```\nText: {text}"},
                        {"role": "assistant", "content": f"```json\n{answer_text}\n```"}]  # fmt: skip
        else:  # schema in the system turn, bare answer with a short reasoning
            messages = [{"role": "system", "content": f"Reply only with JSON that validates against: {schema_text}"},
                        {"role": "user", "content": text},
                        {"role": "assistant", "reasoning_content": "I map each fact in the text to a schema field.",
                         "content": answer_text}]  # fmt: skip
        rows.append({"messages": messages})
    return rows


def length_control_rows(rng: random.Random) -> list[dict]:
    rows = []
    for n in rng.sample(range(8, 121), 40):
        steps, total = [], 0
        for k in range(1, n + 1):
            total += k * k
            steps.append(f"Step {k}: {k} squared is {k * k}, running total {total}.")
        reasoning = f"I add the squares from 1 to {n} one at a time.\n" + "\n".join(steps)
        reasoning += f"\nCheck with n(n+1)(2n+1)/6 = {n * (n + 1) * (2 * n + 1) // 6}."
        rows.append({"messages": [
            {"role": "user", "content": f"What is the sum of the squares of the integers from 1 to {n}?"},
            {"role": "assistant", "reasoning_content": reasoning, "content": f"The sum is {total}."}]})  # fmt: skip
    return rows


def main() -> None:
    rng = random.Random(0)
    _write("reasoning.jsonl", reasoning_rows(rng))
    _write("plain.jsonl", plain_rows(rng))
    _write("tool_use_hermes_fc.jsonl", hermes_fc_rows(rng))
    _write("tool_use_openai.jsonl", openai_tool_rows(rng))
    _write("json_schema.jsonl", json_schema_rows(rng))
    _write("length_control.jsonl", length_control_rows(rng))


if __name__ == "__main__":
    main()
