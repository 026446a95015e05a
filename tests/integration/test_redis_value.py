"""The user value as the real Redis holds it: a small stream's final values read back and decoded
by msgpack with its default options, pinned; the write-if-newer script run in the real Redis
against the codec's bytes at every width of ``seq``."""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest

from serving_cache import RedisWriter, UserVectors, decode_user, user_key
from serving_cache.codec import HEAD, encode_user
from tests.flowkit import click_stream, expected_states, tiny_learner

# sha256 over every user's decoded fields (float16 vectors and int32 seen rows as stored), for
# click_stream(n_users=6, n_events=300, seed=11) on the tiny learner. It changes only when the
# learner's arithmetic or its served settings do (last: d_lr 0.05 and k_hysteresis_up 1 served,
# 2026-12-04; before them a16406af..., d_u's step target); the container (msgpack bin since
# issue 18) is not part of it.
STREAM_PIN = "149e0e0e03230ce9219731147bd2b376b4c97f86126d2690f74fc0b53ff5126f"


def _stream_values() -> dict[str, UserVectors]:
    """Each user's final value, as the dataflow pushes it (streams.online)."""
    states = expected_states(click_stream(n_users=6, n_events=300, seed=11), tiny_learner())
    out = {}
    for user, st in states.items():
        V = st.V  # type: ignore[attr-defined]
        out[user] = UserVectors(st.seq, st.version, V.shape[0], st.d, V.shape[1], V.copy(),  # type: ignore[attr-defined]
                                st.last_ts, st.n_events, "kmeans", st.recent[-50:])  # type: ignore[attr-defined]
    return out


def test_stream_values_read_back_decode_with_msgpack_defaults(redis_client, namespace) -> None:
    want = _stream_values()
    assert RedisWriter(redis_client, namespace).write_batch(list(want.items())) == len(want)
    h = hashlib.sha256()
    for user in sorted(want):
        raw = redis_client.get(user_key(namespace, user))
        m = msgpack.unpackb(raw)  # a foreign reader: msgpack-python's default options
        uv = want[user]
        assert list(m) == ["v", "seq", "model", "a", "k", "d", "dim", "vecs", "ts", "n", "s"]
        assert (m["v"], m["seq"], m["model"], m["a"], m["k"], m["d"], m["dim"], m["ts"], m["n"]) == (
            1, uv.seq, uv.model, uv.anchor, uv.k, uv.d, uv.dim, uv.ts, uv.n)
        assert isinstance(m["vecs"], bytes) and isinstance(m["s"], bytes)
        assert m["vecs"] == uv.vecs.astype("<f2").tobytes()
        assert np.array_equal(np.frombuffer(m["s"], "<i4"), uv.seen)
        back = decode_user(raw)
        assert back == decode_user(encode_user(uv))
        h.update(user.encode())
        h.update(repr((back.seq, back.model, back.anchor, back.k, back.d, back.dim, back.ts,
                       back.n)).encode())
        h.update(back.vecs.astype("<f2").tobytes())
        h.update(back.seen.astype("<i4").tobytes())
    assert h.hexdigest() == STREAM_PIN


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                 2**53 - 1])
def test_the_script_reads_seq_from_the_codecs_bytes(redis_client, namespace, seq) -> None:
    # Redis's cmsgpack refuses the codec's bin fields, so the script must read seq from the bytes
    # after HEAD: were it to miss them, it would take the value as unparseable and overwrite it.
    w = RedisWriter(redis_client, namespace, keys_per_call=2)
    key = user_key(namespace, "a")

    def uv(q: int) -> UserVectors:
        return UserVectors(seq=q, model="m", k=1, d=0.5, dim=2, vecs=np.full((1, 2), q % 7, np.float32),
                           ts=q, seen=np.arange(60, dtype=np.int32))

    assert w.write_batch([("a", uv(seq)), ("b", uv(1))]) == 2
    raw = redis_client.get(key)
    assert raw.startswith(HEAD) and raw == encode_user(uv(seq))
    with pytest.raises(Exception, match="Bad data format"):  # what the fallback would meet
        redis_client.eval("return cmsgpack.unpack(ARGV[1])", 0, raw)
    if seq > 0:
        assert w.write_batch([("a", uv(seq - 1))]) == 0
    assert w.write_batch([("a", uv(seq))]) == 0
    assert redis_client.get(key) == raw
    assert w.write_batch([("a", uv(seq + 1))]) == 1
    assert decode_user(redis_client.get(key)).seq == seq + 1


def test_the_reader_tells_an_undecodable_value_from_an_absent_one(redis_client, namespace,
                                                                  caplog) -> None:
    from serving_cache import CodecError, UserReader

    good = UserVectors(seq=1, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1)
    RedisWriter(redis_client, namespace).write_batch([("good", good)])
    redis_client.set(user_key(namespace, "bad"), b"garbage")
    redis_client.set(user_key(namespace, "inf"), encode_user(good).replace(  # 1.0 -> +inf
        np.ones(2, "<f2").tobytes(), b"\x00\x7c\x00\x3c"))
    reader = UserReader(redis_client, namespace)
    with caplog.at_level("WARNING", logger="serving_cache.reader"):
        assert reader.get_checked("nobody") is None and reader.get("bad") is None
        for uid, why in (("bad", "not a msgpack map"), ("inf", "non-finite")):
            with pytest.raises(CodecError, match=why):
                reader.get_checked(uid)
        assert reader.get_many(["good", "bad", "nobody", "inf"]) == [good, None, None, None]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned  # once per key, however often it is read
    assert user_key(namespace, "bad") in warned[0] and user_key(namespace, "inf") in warned[1]


def test_a_key_of_another_redis_type_is_an_undecodable_value(redis_client, namespace,
                                                             caplog) -> None:
    """A user's key written as a hash by something else: the reader (and so the API, ``diam
    recommend`` and ``diam inspect user``) serves the user cold with the reason, where the
    command's WRONGTYPE error was an HTTP 500 and a traceback."""
    from serving_cache import CodecError, UserReader

    good = UserVectors(seq=1, model="m", k=1, d=0.5, dim=2, vecs=np.ones((1, 2), np.float32), ts=1)
    RedisWriter(redis_client, namespace).write_batch([("good", good)])
    redis_client.hset(user_key(namespace, "hashed"), "a", "b")
    reader = UserReader(redis_client, namespace)
    with caplog.at_level("WARNING", logger="serving_cache.reader"):
        with pytest.raises(CodecError, match="another Redis type"):
            reader.get_checked("hashed")
        assert reader.get("hashed") is None
        assert reader.get_many(["good", "hashed", "nobody"]) == [good, None, None]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and user_key(namespace, "hashed") in warned[0], warned
