#!/usr/bin/env python3
"""Tool calling through real clients against a running llamafile server (Qwen2.5-Coder, whose
template uses the Hermes `<tool_call>` format):

- the official `openai` client: a streamed call reassembled by `chat.completions.stream(...)`
  and by adding up the raw deltas of `create(stream=True)`; a round trip with a `tool` result;
- LangChain (`langchain-openai`): `bind_tools([...]).invoke(...)` with parsed args, a round trip
  with a `ToolMessage`, and `with_structured_output(PydanticModel)` with its default method,
  `method="json_schema"` and `method="function_calling"`.

Usage: python3 tests/tool_clients.py http://127.0.0.1:PORT/ [openai|langchain]
Exit status 0 when every check passes; 2 when a needed package is not installed.
"""
import json
import sys

URL = sys.argv[1].rstrip("/") + "/v1"
PART = sys.argv[2] if len(sys.argv) > 2 else "openai"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city's name"}},
            "required": ["city"],
        },
    },
}
QUESTION = "What is the weather in Paris?"
RESULT = '{"temperature_c": 21, "sky": "sunny"}'


def check(ok, what, detail=""):
    if not ok:
        print(f"not ok - {what}: {detail}")
        sys.exit(1)
    print(f"ok - {what}")


def openai_checks():
    try:
        from openai import OpenAI
    except ImportError:
        print("SKIP: the openai package is not installed (pip install openai)", file=sys.stderr)
        sys.exit(2)
    client = OpenAI(base_url=URL, api_key="none")
    messages = [{"role": "user", "content": QUESTION}]

    # The SDK's streaming helper reassembles the call from the deltas.
    with client.chat.completions.stream(model="m", messages=messages, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=100) as s:
        kinds = {type(ev).__name__ for ev in s}
        final = s.get_final_completion()
    choice = final.choices[0]
    calls = choice.message.tool_calls or []
    check(choice.finish_reason == "tool_calls" and len(calls) == 1, "stream: finish_reason tool_calls, one call", final)
    args = json.loads(calls[0].function.arguments)
    check(calls[0].function.name == "get_weather" and isinstance(args.get("city"), str), "stream: the call reassembled with its arguments", calls[0])
    check("FunctionToolCallArgumentsDeltaEvent" in kinds, "stream: argument delta events", kinds)
    check(calls[0].id.startswith("call_"), "stream: the call has an id", calls[0].id)

    # The raw deltas: first the index, id, type and name, then pieces of the arguments.
    raw = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=100, stream=True)
    acc, pieces, finish = {}, 0, None
    for chunk in raw:
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        finish = c.finish_reason or finish
        for d in c.delta.tool_calls or []:
            if d.id:
                check(d.index not in acc and d.type == "function" and d.function.name, "raw deltas: a call's first delta names it", d)
                acc[d.index] = {"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""}
            else:
                acc[d.index]["arguments"] += d.function.arguments or ""
                pieces += 1
    check(finish == "tool_calls" and len(acc) == 1 and pieces >= 2, "raw deltas: one call, arguments in pieces", (finish, acc, pieces))
    check(json.loads(acc[0]["arguments"]) == args, "raw deltas add up to the helper's arguments", acc)

    # The round trip: the call and a `tool` result go back; the answer uses the result.
    assistant = {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].id, "type": "function", "function": {"name": "get_weather", "arguments": calls[0].function.arguments}}]}
    tool = {"role": "tool", "tool_call_id": calls[0].id, "content": RESULT}
    # (`tool_choice: none`: left to choose, this small model calls the tool again.)
    r = client.chat.completions.create(model="m", messages=messages + [assistant, tool], tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=80)
    text = r.choices[0].message.content or ""
    check(r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls, "round trip: a text answer", r.choices[0])
    check("21" in text or "sunny" in text.lower(), "round trip: the answer uses the tool's result", text)


def langchain_checks():
    try:
        from langchain_core.messages import HumanMessage, ToolMessage
        from langchain_core.tools import tool
        from langchain_openai import ChatOpenAI
        from pydantic import BaseModel, Field
    except ImportError:
        print("SKIP: langchain-openai is not installed (pip install langchain-openai)", file=sys.stderr)
        sys.exit(2)

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return RESULT

    llm = ChatOpenAI(base_url=URL, api_key="none", model="m", temperature=0, max_tokens=120)
    with_tools = llm.bind_tools([get_weather])
    ai = with_tools.invoke(QUESTION)
    check(len(ai.tool_calls) == 1 and ai.tool_calls[0]["name"] == "get_weather", "bind_tools: one call", ai)
    args = ai.tool_calls[0]["args"]
    check(isinstance(args, dict) and "paris" in str(args.get("city", "")).lower(), "bind_tools: parsed args", args)

    history = [HumanMessage(QUESTION), ai, ToolMessage(content=get_weather.invoke(args), tool_call_id=ai.tool_calls[0]["id"])]
    # (tool_choice none: left to choose, this small model calls the tool again.)
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(history)
    check(not answer.tool_calls and ("21" in answer.content or "sunny" in answer.content.lower()), "ToolMessage round trip: the answer uses the result", answer)

    class Weather(BaseModel):
        """A weather report."""

        city: str = Field(description="the city", max_length=40)
        temperature_c: int = Field(description="temperature in degrees Celsius")
        sunny: bool

    prompt = "Paris: 21 degrees Celsius, clear sky. Report the weather."
    for method in [None, "json_schema", "function_calling"]:
        structured = llm.with_structured_output(Weather) if method is None else llm.with_structured_output(Weather, method=method)
        w = structured.invoke(prompt)
        check(isinstance(w, Weather) and w.city.strip() != "", f"with_structured_output({method or 'default'}) gives a Weather", w)


if __name__ == "__main__":
    {"openai": openai_checks, "langchain": langchain_checks}[PART]()
