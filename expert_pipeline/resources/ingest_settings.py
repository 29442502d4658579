import dagster as dg


class IngestSettings(dg.ConfigurableResource):
    """Tuning of the ingest assets; built from the product's settings object."""

    work_dir: str
    embedding_batch_size: int = 64
    embed_while_reading: bool = True
    chunk_max_tokens: int = 256
    chunk_overlap_tokens: int = 32
    upsert_batch_size: int = 200
