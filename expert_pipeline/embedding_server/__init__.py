"""One process per machine that holds the local embedding model and serves it over an
OpenAI-compatible `/v1/embeddings`, so Dagster runs and the status API stay small."""
