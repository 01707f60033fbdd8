#!/usr/bin/env python3
"""The real `openai` Python client against a running `kvpr serve`.

Usage: openai_client.py BASE_URL API_KEY MODEL

Run by tests/cli_serve.rs (`make test` installs the pinned client into its
own virtual environment). Exercises what users of the OpenAI API do:
completions whole and streamed, chat whole and streamed (with usage), stop
strings, seeded sampling, and the client's own error types for a 400 and a
401. Exits non-zero, saying what differed, on any mismatch.
"""

import sys

import openai


def main() -> None:
    base_url, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)

    models = [m.id for m in client.models.list()]
    assert models == [model], models

    # Completions, greedy: whole and streamed give the same text.
    whole = client.completions.create(
        model=model, prompt="kvpr serves long contexts", max_tokens=12, temperature=0
    )
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length", whole
    assert whole.usage.completion_tokens == 12, whole.usage
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12, whole.usage
    pieces = client.completions.create(
        model=model, prompt="kvpr serves long contexts", max_tokens=12, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].text for c in pieces if c.choices)
    assert streamed == text, (streamed, text)

    # A stop string cuts the text before it.
    if len(text) >= 6:
        stop = text[3:5]
        cut = client.completions.create(
            model=model, prompt="kvpr serves long contexts", max_tokens=12, temperature=0, stop=[stop]
        )
        assert cut.choices[0].text == text[: text.index(stop)], (cut.choices[0].text, text, stop)
        assert cut.choices[0].finish_reason == "stop", cut

    # Seeded sampling repeats itself.
    draws = [
        client.completions.create(
            model=model, prompt="sample me", max_tokens=10, temperature=0.9, top_p=0.95, seed=1234
        ).choices[0].text
        for _ in range(2)
    ]
    assert draws[0] == draws[1], draws

    # Chat, whole and streamed (with usage in a last chunk).
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0
    )
    reply = chat.choices[0].message
    assert reply.role == "assistant", reply
    assert chat.usage.completion_tokens == 8, chat.usage
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == reply.content, (content, reply.content)
    assert chunks[-1].usage.completion_tokens == 8, chunks[-1]
    assert chunks[-1].usage.prompt_tokens == chat.usage.prompt_tokens, chunks[-1]

    # The client's own errors: a 400 naming the field, a 401.
    try:
        client.completions.create(model=model, prompt="x", max_tokens=4, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "temperature", e.body
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    print("openai client: ok")


if __name__ == "__main__":
    main()
