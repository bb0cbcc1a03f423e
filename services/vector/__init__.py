"""The ingest_vector job's task handlers: prepare chunks (stage 1), load a chunk (2), catalog the table (3)."""

from __future__ import annotations

from services.context import one_at_a_time
from services.vector.load import load_vector_chunk
from services.vector.prepare import prepare_vector_chunks
from services.vector.publish import publish_vector_table

# Preparing and loading hold large batches: one of them at a time per worker process.
HANDLERS = {
    "prepare_vector_chunks": one_at_a_time(prepare_vector_chunks),
    "load_vector_chunk": one_at_a_time(load_vector_chunk),
    "create_vector_stac": publish_vector_table,  # stage 3: index, then publish
}

__all__ = ["HANDLERS", "load_vector_chunk", "prepare_vector_chunks", "publish_vector_table"]
