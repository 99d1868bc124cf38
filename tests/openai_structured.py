#!/usr/bin/env python3
"""The official `openai` Python client's structured output against a running llamafile server:
`chat.completions.parse(response_format=PydanticModel)` at temperature 1.0, and a bad schema
arriving as the client's BadRequestError.

Usage: python3 tests/openai_structured.py http://127.0.0.1:PORT/
Exit status 0 when every check passes; 2 when `openai` (with pydantic) is not installed.
"""
import sys

try:
    import openai
    from openai import OpenAI
    from pydantic import BaseModel, Field
except ImportError:
    print("SKIP: the openai package (with pydantic) is not installed (pip install openai)", file=sys.stderr)
    sys.exit(2)
from typing import List, Literal, Optional


class Address(BaseModel):
    city: str = Field(max_length=30)
    country: str = Field(max_length=30)


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int
    role: Literal["admin", "user", "guest"]
    address: Address
    nicknames: List[str] = Field(max_length=3)
    email: Optional[str] = Field(max_length=40)


def ok(what):
    print("ok -", what, flush=True)


def main(url):
    client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key="not-needed", max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    for seed in range(3):
        r = client.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Invent a person and describe them."}],
            response_format=Person,
            temperature=1.0,
            seed=seed,
            max_tokens=400,
        )
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        assert isinstance(msg.parsed, Person), msg
        ok(f"chat.completions.parse (seed {seed}): {msg.content}")
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
        )
        raise AssertionError("a schema with an unsupported keyword was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "uniqueItems" in str(e), e
        ok("unsupported schema keyword: BadRequestError naming it")


if __name__ == "__main__":
    main(sys.argv[1])
