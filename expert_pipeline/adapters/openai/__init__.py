"""Embeddings from the OpenAI API (or any OpenAI-compatible server): `tokens` counts tokens,
`planning` packs inputs into requests within the API's limits, `embedder` sends them."""
