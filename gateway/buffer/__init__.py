"""The durable buffer, in parts: the stored chunk format (`encoder`), the seq reservation
(`seqfile`), SQLite (`store`), the commit loop and the uplink's view of it (`core`), the
seam the uplink reads through (`source`) and an in-memory source for tests (`memory`)."""

from gateway.buffer.core import MAX_PENDING, Buffer, BufferStats
from gateway.buffer.encoder import YIELD_S, ChunkEncoder, group_chunks, sanitize
from gateway.buffer.seqfile import SEQ_RESERVE, read_side_file, resume_seq, seq_side_path
from gateway.buffer.source import Chunk, ChunkSource, DropSource
from gateway.buffer.store import (
    SCHEMA_VERSION,
    TOTALS_SQL,
    StoredStats,
    file_bytes,
    read_stats,
)
from gateway.sqlitedb import is_corruption

__all__ = [
    "MAX_PENDING",
    "SCHEMA_VERSION",
    "SEQ_RESERVE",
    "TOTALS_SQL",
    "YIELD_S",
    "Buffer",
    "BufferStats",
    "Chunk",
    "ChunkEncoder",
    "ChunkSource",
    "DropSource",
    "StoredStats",
    "file_bytes",
    "group_chunks",
    "is_corruption",
    "read_side_file",
    "read_stats",
    "resume_seq",
    "sanitize",
    "seq_side_path",
]
