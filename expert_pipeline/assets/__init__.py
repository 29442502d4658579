"""The ingest job's assets, one module per stage, in the order they run."""

from expert_pipeline.assets.chunks import expert_chunks
from expert_pipeline.assets.embeddings import expert_embeddings
from expert_pipeline.assets.files import expert_files
from expert_pipeline.assets.vectors import expert_vectors

INGEST_ASSETS = [expert_files, expert_chunks, expert_embeddings, expert_vectors]
