"""The ingest_vector job's task handlers: prepare chunks (stage 1), load a chunk (2), catalog the table (3)."""

from __future__ import annotations

from services.vector.load import load_vector_chunk
from services.vector.prepare import prepare_vector_chunks
from services.vector.stac import create_vector_stac

HANDLERS = {
    "prepare_vector_chunks": prepare_vector_chunks,
    "load_vector_chunk": load_vector_chunk,
    "create_vector_stac": create_vector_stac,
}

__all__ = ["HANDLERS", "create_vector_stac", "load_vector_chunk", "prepare_vector_chunks"]
