"""The official OpenAI Python SDK against grip's OpenAI-compatible front.

Run by tests/tests/openai_front.rs with the daemon's base URL; exits non-zero on the first
failed check, printing what was expected and what came back.
"""

import asyncio
import json
import sys

import openai
from openai import AsyncOpenAI, OpenAI

BASE = sys.argv[1]
client = OpenAI(base_url=BASE, api_key="unused", max_retries=0)
HI = [{"role": "user", "content": "hello sdk"}]


def check(cond, what, got=None):
    if not cond:
        print(f"FAILED: {what}: {got!r}")
        sys.exit(1)


# Plain completion on the scripted driver.
r = client.chat.completions.create(model="scripted", messages=HI)
check(r.choices[0].message.content == "echo: hello sdk", "plain content", r)
check(r.choices[0].finish_reason == "stop", "finish_reason", r.choices[0].finish_reason)
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage", r.usage)

# Streamed, with usage in a last chunk that has no choices.
text, usage, finish = "", None, None
for chunk in client.chat.completions.create(
    model="scripted", messages=HI, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage is not None:
        check(chunk.choices == [], "usage chunk has no choices", chunk)
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check(text == "echo: hello sdk", "streamed text", text)
check(finish == "stop" and usage is not None and usage.completion_tokens > 0, "stream end", (finish, usage))

# Client tools: the model's call comes back, the SDK sends the result, the model answers.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": "weather in Paris?"}]
r = client.chat.completions.create(model="weather", messages=messages, tools=tools)
choice = r.choices[0]
check(choice.finish_reason == "tool_calls", "tool_calls finish", choice)
call = choice.message.tool_calls[0]
check(call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, "call", call)
messages.append(choice.message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"})
r = client.chat.completions.create(model="weather", messages=messages, tools=tools)
check(r.choices[0].message.content == "It is sunny in Paris.", "answer after the tool result", r)

# A server-tool agent: grip runs TextTools, the client gets the final answer.
r = client.chat.completions.create(model="counter", messages=[{"role": "user", "content": "count a b c"}])
check(r.choices[0].message.content == "There are 3 words.", "server tools", r)
check(not r.choices[0].message.tool_calls, "no tool calls for the client", r.choices[0].message)

# Structured output through response_format.
schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
r = client.chat.completions.create(
    model="json", messages=HI,
    response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
)
check(json.loads(r.choices[0].message.content) == {"answer": 42}, "structured output", r)

# Errors raise the SDK's exception classes.
try:
    client.chat.completions.create(model="no-such-model", messages=HI)
    check(False, "404 raised")
except openai.NotFoundError as e:
    check(e.status_code == 404 and e.code == "model_not_found", "NotFoundError", e)
try:
    client.chat.completions.create(model="scripted", messages=HI, n=2)
    check(False, "400 raised")
except openai.BadRequestError as e:
    check(e.param == "n", "BadRequestError param", e)

# The local model (llama.cpp in the daemon), plain and streamed; max_tokens is allowed for it.
r = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
check(r.choices[0].message.content and r.usage.completion_tokens > 0, "local model answer", r)
check(r.choices[0].finish_reason in ("stop", "length"), "local finish_reason", r.choices[0].finish_reason)
pieces = []
for chunk in client.chat.completions.create(
    model="local", messages=[{"role": "user", "content": "Count to three."}], max_tokens=8, stream=True
):
    pieces += [c.delta.content for c in chunk.choices if c.delta.content]
check(len(pieces) > 1 and "".join(pieces).strip(), "local model stream", pieces)

# Models.
ids = [m.id for m in client.models.list()]
check(ids == ["counter", "json", "slow", "weather", "local", "scripted"], "models.list", ids)
check(client.models.retrieve("weather").id == "weather", "models.retrieve", None)


# The async client, 50 concurrent streams.
async def many():
    aclient = AsyncOpenAI(base_url=BASE, api_key="unused", max_retries=0)

    async def one(i):
        out = ""
        stream = await aclient.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": f"stream {i}"}], stream=True
        )
        async for chunk in stream:
            for c in chunk.choices:
                out += c.delta.content or ""
        return out

    outs = await asyncio.gather(*(one(i) for i in range(50)))
    for i, out in enumerate(outs):
        check(out == f"echo: stream {i}", f"async stream {i}", out)
    await aclient.close()


asyncio.run(many())
print("all OpenAI SDK checks passed")
