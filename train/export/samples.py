"""Fixed conversations for verification: template parity, logits prompts, generation prompts.

They cover the template's branches: default system prompt, a user system prompt, multi-turn history,
reasoning (``thinking=True``), tool definitions, a tool call, a tool response and the answer after it.
"""

from __future__ import annotations

from typing import Any

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}

CONVERSATIONS: list[tuple[str, dict[str, Any], bool]] = [
    (
        "plain",
        {
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."},
            ]
        },
        False,
    ),
    (
        "system+multi-turn",
        {
            "messages": [
                {"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "Seven is prime."},
                {"role": "user", "content": "And an even one?"},
                {"role": "assistant", "content": "Two is the only even prime."},
            ]
        },
        False,
    ),
    (
        "thinking",
        {
            "messages": [
                {"role": "user", "content": "What is 17 * 3?"},
                {
                    "role": "assistant",
                    "reasoning_content": "17 * 3 = 51.",
                    "content": "17 × 3 = 51.",
                },
            ]
        },
        True,
    ),
    (
        "tools",
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Is it raining in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city": "Paris", "unit": "c"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"rain": true, "temp_c": 14}'},
                {"role": "assistant", "content": "Yes, it is raining in Paris (14 °C)."},
            ],
        },
        False,
    ),
]
