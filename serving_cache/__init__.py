"""Redis key schema and value codec, the write-if-newer writer, the reader, FAISS retrieval and
the recommendation API."""

from serving_cache.codec import CodecError, UserVectors, decode_user, encode_user
from serving_cache.config import RedisConfig, RedisSettingsError
from serving_cache.connection import redis_client
from serving_cache.keys import model_active_key, user_key, user_pattern, validate_namespace
from serving_cache.reader import UserReader
from serving_cache.recommend import Recommendation, Recommender
from serving_cache.retrieval import SnapshotIndex
from serving_cache.writer import RedisWriter

__all__ = [
    "CodecError",
    "RedisConfig",
    "RedisSettingsError",
    "RedisWriter",
    "Recommendation",
    "Recommender",
    "SnapshotIndex",
    "UserReader",
    "UserVectors",
    "decode_user",
    "encode_user",
    "model_active_key",
    "redis_client",
    "user_key",
    "user_pattern",
    "validate_namespace",
]
