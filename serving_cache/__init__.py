"""Redis key schema and value codec, the write-if-newer writer, the reader, FAISS retrieval and
the recommendation API."""

from serving_cache.config import RedisConfig

__all__ = ["RedisConfig"]
