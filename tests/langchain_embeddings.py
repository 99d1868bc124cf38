#!/usr/bin/env python3
"""LangChain's `LlamafileEmbeddings` (langchain-community, from PyPI) against a running server.

Usage: python3 tests/langchain_embeddings.py http://127.0.0.1:PORT/
Embeds two documents (`embed_documents`) and a query (`embed_query`) through the client and
prints them as one JSON line {"documents": [[...], [...]], "query": [...]} for the Rust test to
compare with the server's own answers. Exit status 2 when the package is not installed (the
Rust test that runs this skips then).
"""
import json
import sys

try:
    from langchain_community.embeddings import LlamafileEmbeddings
except ImportError:
    print("SKIP: langchain-community is not installed (pip install langchain-community)", file=sys.stderr)
    sys.exit(2)

DOCUMENTS = ["Alpha is the first letter of the Greek alphabet", "Beta is the second letter of the Greek alphabet"]
QUERY = "What is the second letter of the Greek alphabet"


def main(url):
    embedder = LlamafileEmbeddings(base_url=url.rstrip("/"), request_timeout=120)
    documents = embedder.embed_documents(DOCUMENTS)
    assert len(documents) == 2 and all(isinstance(x, float) for v in documents for x in v), documents
    query = embedder.embed_query(QUERY)
    assert len(query) == len(documents[0]), (len(query), len(documents[0]))
    print(json.dumps({"texts": DOCUMENTS + [QUERY], "documents": documents, "query": query}))


if __name__ == "__main__":
    main(sys.argv[1])
