#!/usr/bin/env python3
"""Reference chat-template renderings for kvpr's `serving::ChatTemplate`.

Usage (from the repository root, with the venv of requirements.txt; no network needed):

    /tmp/hfvenv/bin/python scripts/hf-fixtures/make_chat_cases.py \\
        --model ~/.cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out tests/fixtures/chat/cases.json

`--model` defaults to $KVPR_MODEL, then the path above. The templates are:

* `smollm2`   SmolLM2-135M-Instruct's own template, read from the GGUF's
              `tokenizer.chat_template` (bos/eos = the text of its bos/eos ids).
* `llama3`    Meta-Llama-3's template: `bos_token`, `loop.index0`, `| trim` binding tighter
              than `+`.
* `mistral`   Mistral-style: the system message folded into the last user turn (a
              `namespace` found by a first loop), `messages[1:]`, and `raise_exception` when
              the roles do not alternate or a role is neither user nor assistant.
* `qwen25`    Qwen2.5-style: a default system message, `.startswith`, `.split(..)[-1]`,
              `.lstrip`, tool responses grouped, `tojson`, `message.tool_calls` undefined.
* `pycompat`  What Python's Jinja prints that another engine may print otherwise: booleans,
              none, lists, dicts, tuples and floats as Python's `str`; transformers' `tojson`
              (`ensure_ascii=False` by default, `indent`, `separators`, `sort_keys`,
              `ensure_ascii=True` with surrogate pairs); `tools`/`documents` passed as None;
              `{% generation %}` blocks; `{% break %}`/`{% continue %}`; `.items()`, `.get()`,
              `.split()`, `.strip()`, `namespace`; no `bos_token` (undefined).
* `jinja`     Jinja2 semantics Qwen3-style templates rely on: `messages[::-1]`, `is string`,
              `in`, a `{% set %}` inside a loop body (does it outlive its iteration?), macros
              with keyword arguments, `loop.previtem`/`nextitem`, `selectattr`/`map`/`unique`/
              `join`, `~`, inline `if`/`else`.

Each template is rendered for every message list with
`PreTrainedTokenizerFast.apply_chat_template(messages, tokenize=False,
add_generation_prompt=True, chat_template=T)` on the tiny tokenizer of
`tests/fixtures/hf/qwen2` with the template's bos/eos tokens, and the script asserts that
`transformers.utils.chat_template_utils.render_jinja_template` gives the same text. A
rendering that raises (`raise_exception`) is recorded as `{"error": message}`. The output is
deterministic (no case depends on the date: `strftime_now` is only measured).
"""

import argparse
import json
import os
import struct
import sys

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

MAX_BYTES = 60_000


def read_gguf_metadata(path, wanted):
    """The values of the `wanted` metadata keys of a GGUF (v2/v3) file's header."""
    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out = {}
    with open(path, "rb") as f:

        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def string():
            return f.read(rd("Q")).decode("utf-8")

        def value(ty):
            if ty in scalars:
                return rd(scalars[ty])
            if ty == 8:
                return string()
            if ty == 9:
                elem, n = rd("I"), rd("Q")
                return [value(elem) for _ in range(n)]
            raise ValueError(f"{path}: unknown GGUF value type {ty}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = rd("I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version}")
        rd("Q")  # tensor count
        for _ in range(rd("Q")):
            key = string()
            v = value(rd("I"))
            if key in wanted:
                out[key] = v
    return out


def smollm2_template(model):
    md = read_gguf_metadata(
        model,
        {
            "tokenizer.chat_template",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
        },
    )
    tokens = md["tokenizer.ggml.tokens"]
    return {
        "source": md["tokenizer.chat_template"],
        "bos_token": tokens[md["tokenizer.ggml.bos_token_id"]],
        "eos_token": tokens[md["tokenizer.ggml.eos_token_id"]],
    }


LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

MISTRAL = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(last_user_index=-1) %}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- set ns.last_user_index = loop.index0 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.index0 == ns.last_user_index and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content']|trim + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

QWEN25 = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {%- set content = message.content %}
        {%- if message.role == "assistant" and content.startswith('<think>') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- for tool_call in message.tool_calls %}
            {{- '\\n<tool_call>\\n' + tool_call | tojson + '\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content | tojson }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

PYCOMPAT = """\
{#- What Python's Jinja prints, and transformers' tojson -#}
{%- set ns = namespace(users=0) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}
{%- endfor %}
users={{ ns.users }} total={{ messages|length }} gen={{ add_generation_prompt }} none={{ none }}
tools={{ tools }} {{ tools is defined }} {{ tools is none }} docs={{ documents }} bos=[{{ bos_token }}] eos=[{{ eos_token }}]
{% for message in messages %}
    {%- if loop.index0 > 4 %}{% break %}{% endif %}
    {%- if message.content == '' %}{% continue %}{% endif %}
[{{ loop.index }}/{{ loop.length }}] {{ message.role|upper }} {{ message.content.strip()|tojson }} {{ message.content.startswith('Q') }} {{ message.content.split()|length }}
{{ message|tojson }}
{{ {'role': message.role, 'n': loop.index0, 'f': 0.5, 'g': 1e-05, 'big': 1e16, 'ok': true, 'nil': none, 'l': [], 'd': {}}|tojson(indent=2) }}
{{ message|tojson(separators=(',', ':'), sort_keys=true, ensure_ascii=true) }}
    {%- generation %} {{ message.content|trim }}{% endgeneration %}

{% endfor %}
{{ [1, 'two', none, true, 2.5, "it's", 'q"uote'] }} {{ {'a': 'x\\ty', 'b': -3} }} {{ (1, 'a') }} {{ 0.1 + 0.2 }} {{ 7 / 2 }} {{ 7 // 2 }} [{{ undefined_name }}]
{%- for k, v in messages[0].items() %} {{ k }}={{ v }}{% endfor %}
{{ messages[0].get('name', 'anon') }} {{ strftime_now('%Y-%m-%d')|length }}
{%- if add_generation_prompt %}
<assistant>
{%- endif %}
"""

JINJA = """\
{#- Jinja2 semantics Qwen3-style templates lean on -#}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- macro tag(m, suffix='') %}<{{ m.role|capitalize }}{{ suffix }}>{% endmacro %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "assistant" and '</think>' in content %}
        {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
        {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
    {%- endif %}
    {{- tag(message, suffix='#' ~ loop.index) }}
    {%- if loop.previtem is defined and loop.previtem.role == message.role %} (again){% endif %}
    {%- if loop.index0 >= ns.last_query_index %} [query]{% endif %}
    {%- if reasoning is defined %}<think>{{ reasoning }}</think>{% endif %}
    {{- content }}
    {%- if loop.nextitem is defined %}{{ '\\n' }}{% endif %}
{%- endfor %}
{{ '\\n' ~ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|map('trim')|join(' | ') }}
roles={{ messages|map(attribute='role')|unique|list }} first={{ (messages|first).role }} n={{ messages|count }} {{ messages[-1].role in ['user', 'tool'] }} {{ reasoning is defined }} last={{ ns.last_query_index }}
{%- if add_generation_prompt %}
<Assistant>{{ '' if messages|length > 1 else ' (first)' }}
{%- endif %}
"""

MESSAGES = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Q: name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another?"},
    ],
    "unicode": [
        {"role": "user", "content": "Grüße, 世界! 👋🏽 naïve café — «ok»"},
        {"role": "assistant", "content": "Ça va? Ελληνικά, עברית, \u2028sep, \u00a0nbsp"},
        {"role": "user", "content": "🙂"},
    ],
    "whitespace": [
        {"role": "user", "content": "  leading and trailing  \n"},
        {"role": "assistant", "content": "\n\nanswer\t\n"},
        {"role": "user", "content": "line1\r\nline2\n\n\n{{ not a template }} {% raw %} <|im_end|> 'q' \"dq\" \\ \x01"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": " "},
    ],
    "tool": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "<think>\nLet me check.\n</think>\n\nCalling the tool."},
        {"role": "tool", "content": '{"temp": 21, "unit": "°C"}'},
        {"role": "tool", "content": "second"},
        {"role": "user", "content": "Thanks"},
    ],
    "user_tool": [
        {"role": "user", "content": "Run it."},
        {"role": "tool", "content": "42"},
    ],
    "two_users": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
}


def templates(model):
    return {
        "smollm2": smollm2_template(model),
        "llama3": {"source": LLAMA3, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "mistral": {"source": MISTRAL, "bos_token": "<s>", "eos_token": "</s>"},
        "qwen25": {"source": QWEN25, "bos_token": None, "eos_token": "<|im_end|>"},
        "pycompat": {"source": PYCOMPAT, "bos_token": None, "eos_token": "</s>"},
        "jinja": {"source": JINJA, "bos_token": "<s>", "eos_token": "</s>"},
    }


def render(tokenizer_dir, t, messages):
    """transformers' rendering, or the error a template raised."""
    specials = {"bos_token": t["bos_token"], "eos_token": t["eos_token"]}
    tk = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir, **specials)
    try:
        text = tk.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=t["source"]
        )
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}
    # The renderer underneath, with only the two special tokens: the same text (the
    # tokenizer's other special tokens, e.g. pad_token, are used by no template here).
    kwargs = {k: v for k, v in specials.items() if v is not None}
    (direct,), _ = render_jinja_template(
        [messages], chat_template=t["source"], add_generation_prompt=True, **kwargs
    )
    assert direct == text, (direct, text)
    return {"expected": text}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_model = os.environ.get("KVPR_MODEL") or os.path.expanduser(
        "~/.cache/kvpr/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    ap.add_argument("--model", default=default_model, help="the SmolLM2 GGUF (its chat template)")
    ap.add_argument("--out", default="tests/fixtures/chat/cases.json")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tokenizer_dir = os.path.join(root, "tests/fixtures/hf/qwen2")

    tpls = templates(args.model)
    cases = []
    for tname, t in tpls.items():
        for mname, messages in MESSAGES.items():
            cases.append({"template": tname, "messages": mname, **render(tokenizer_dir, t, messages)})
    errors = [c for c in cases if "error" in c]
    # The alternation and the role checks both fire, and nothing else raises.
    assert {c["template"] for c in errors} == {"mistral"}, errors
    assert len({c["error"] for c in errors}) == 2, errors

    out = {
        "what": "transformers' apply_chat_template(messages, tokenize=False, "
        "add_generation_prompt=True) for each template and message list; made by "
        "scripts/hf-fixtures/make_chat_cases.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "templates": tpls,
        "messages": MESSAGES,
        "cases": cases,
    }
    text = json.dumps(out, indent=1, ensure_ascii=False) + "\n"
    size = len(text.encode("utf-8"))
    assert size < MAX_BYTES, f"{size} bytes: keep the fixture under {MAX_BYTES}"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{args.out}: {len(cases)} cases ({len(errors)} errors), {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
