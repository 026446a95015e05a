"""Security settings against real servers: a Redis ACL user with a password, Redis over TLS
(``rediss://``) and Kafka with SASL (PLAIN and SCRAM-SHA-256), each used by the dataflow (and Redis by the API);
wrong credentials stop a run at once with an error naming the settings.

The servers are private to this module (another redis-server, another broker from the local
stack's launcher with :func:`diam.stack_kafka.with_sasl_plain`), so the shared stack keeps
running without authentication for everyone else.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py

from serving_cache import RedisConfig, RedisWriter, UserVectors, redis_client
from streams.config import FlowConfig, KafkaConfig
from streams.kafka_io import ensure_topic
from streams.online import LearnerHolder
from streams.preflight import ServiceConfigError
from streams.runner import OnlineJob, run_online
from tests.flowkit import click_stream, tiny_learner
from tests.integration.helpers import click_payloads, produce

FLOW = FlowConfig(push_every_events=4, push_every_ms=100, epoch_interval_s=0.2)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def _redis_server(tmp: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is needed (apt-get install redis-server)"
    tmp.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(tmp), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.terminate()
        p.wait(20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    d = tmp_path_factory.mktemp("certs")

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, cwd=d)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=diam-test-ca",
       "-keyout", "ca.key", "-out", "ca.crt")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
       "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return {n: str(d / n) for n in ("ca.crt", "server.crt", "server.key")}


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory) -> Iterator[int]:
    """A redis-server whose only user is ``diam`` (password ``s3cret``, keys ``diam:*``)."""
    from diam.stack_proc import free_port

    port = free_port()
    with _redis_server(tmp_path_factory.mktemp("acl"), "--port", str(port), "--user", "default", "off",
                       "--user", "diam", "on", ">s3cret", "~diam:*", "+@all"):
        cfg = RedisConfig(url=f"redis://127.0.0.1:{port}/0", username="diam", password="s3cret")
        _wait(lambda: redis_client(cfg).ping(), 20, "the ACL redis-server")
        yield port


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, certs) -> Iterator[int]:
    from diam.stack_proc import free_port

    port = free_port()
    with _redis_server(tmp_path_factory.mktemp("tls"), "--port", "0", "--tls-port", str(port),
                       "--tls-cert-file", certs["server.crt"], "--tls-key-file", certs["server.key"],
                       "--tls-ca-cert-file", certs["ca.crt"], "--tls-auth-clients", "no"):
        cfg = RedisConfig(url=f"rediss://127.0.0.1:{port}/0", ssl_ca_certs=certs["ca.crt"])
        _wait(lambda: redis_client(cfg).ping(), 20, "the TLS redis-server")
        yield port


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory) -> Iterator[str]:
    """A single-node broker whose client listener takes SASL/PLAIN and SCRAM-SHA-256 (users
    admin and diam)."""
    from diam import stack_kafka as kafka
    from diam.settings import StackConfig
    from diam.stack_proc import free_port, spawn, terminate

    d = tmp_path_factory.mktemp("sasl-broker")
    cfg = StackConfig(kafka_port=free_port(), controller_port=free_port(), kafka_heap="384m")
    jars = kafka.fetch_jars(cfg)
    props, log4j = d / "server.properties", d / "log4j2.properties"
    users = {"admin": "admin-secret", "diam": "diam-secret"}
    props.write_text(kafka.with_sasl_plain(kafka.render_server_properties(cfg, d / "data", 2), users,
                                           scram=True))
    log4j.write_text(kafka.resource("log4j2.properties"))
    java = kafka.jvm_args(cfg, jars, d / "logs", log4j)
    kafka.format_storage(java, props, kafka.new_cluster_id(), scram_users=users)
    pid = spawn(java + ["kafka.Kafka", str(props)], d / "logs" / "kafka.out", d / "kafka.pid")
    bootstrap = f"127.0.0.1:{cfg.kafka_port}"
    try:
        conf = _sasl(bootstrap, "diam-secret").client_config()
        _wait(lambda: kafka.metadata(conf, timeout_s=3.0) is not None, 240, "the SASL broker")
        yield bootstrap
    finally:
        terminate(pid, 30.0)


def _sasl(bootstrap: str, password: str, mechanism: str = "PLAIN") -> KafkaConfig:
    return KafkaConfig(bootstrap=bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                       sasl_username="diam", sasl_password=password)


def _job(kafka: KafkaConfig, redis: RedisConfig, topic: str, ns: str) -> OnlineJob:
    kafka = kafka.model_copy(update={"drift_topic": f"{topic}.drift", "deadletter_topic": f"{topic}.dlq"})
    return OnlineJob(kafka=kafka, redis=redis, flow=FLOW, topic=topic, namespace=ns, bounded=True)


def _holder() -> LearnerHolder:
    learner = tiny_learner()
    return LearnerHolder(learner, learner.base.version)


def _events(kafka: KafkaConfig, topic: str, n_users: int = 5) -> None:
    ensure_topic(kafka, topic, partitions=2)
    produce(kafka, topic, click_payloads(click_stream(n_users=n_users, n_events=60, seed=12)))


def _api_recommends(tmp: Path, client: redis_py.Redis, ns: str) -> None:
    """The API reads a user through ``client`` and answers with that user's items."""
    from fastapi.testclient import TestClient

    from serving_cache.api import get_app
    from serving_cache.recommend import Recommender
    from serving_cache.retrieval import SnapshotIndex
    from snapshotter import SnapshotConfig, SnapshotStore, publish
    from snapshotter.testing import write_checkpoint

    store = SnapshotStore(SnapshotConfig(dir=str(tmp / "snaps")))
    version = publish(write_checkpoint(tmp / "ck", n_items=120, dim=8, seed=3), store, client, ns).version
    snap = SnapshotIndex.load(store.path(version))
    vecs = snap.item_vecs[[3, 60]]
    RedisWriter(client, ns).write_batch([("reader", UserVectors(seq=1, model=version, k=2, d=0.5, dim=8,
                                                                vecs=vecs, ts=1, n=3))])
    with TestClient(get_app(Recommender(snap, client, ns))) as http:
        r = http.get("/users/reader/recommendations?n=5")
    assert r.status_code == 200, r.text
    body = r.json()
    # the user's own vectors, not a cold list for an unknown user (also 200 with 5 items)
    assert not body["cold"] and body["user_model"] == version and body["k"] == 2, body
    # and the list is the one the recommender makes from that value (read through the client)
    direct = Recommender(snap, client, ns).recommend("reader", n=5)
    assert not direct.cold and [x["item_id"] for x in body["items"]] == list(direct.items)


def test_redis_acl_user_for_the_dataflow_and_the_api(stack, topic, acl_redis, tmp_path) -> None:
    cfg = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0", username="diam", password="s3cret")
    _events(stack.settings.kafka, topic)
    run_online(_job(stack.settings.kafka, cfg, topic, "acl"), _holder())
    client = redis_client(cfg)
    assert len(list(client.scan_iter(match="diam:acl:u:*"))) == 5
    _api_recommends(tmp_path, client, "acl-api")
    with pytest.raises(redis_py.AuthenticationError):  # the default user is off
        redis_py.Redis(port=acl_redis).ping()


def test_a_wrong_redis_password_names_the_settings(stack, topic, acl_redis) -> None:
    cfg = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0", username="diam", password="nope")
    with pytest.raises(ServiceConfigError, match="DIAM_REDIS_PASSWORD"):
        run_online(_job(stack.settings.kafka, cfg, topic, "acl"), _holder())


def test_redis_over_tls_for_the_dataflow_and_the_api(stack, topic, tls_redis, certs, tmp_path) -> None:
    cfg = RedisConfig(url=f"rediss://127.0.0.1:{tls_redis}/0", ssl_ca_certs=certs["ca.crt"])
    _events(stack.settings.kafka, topic)
    run_online(_job(stack.settings.kafka, cfg, topic, "tls"), _holder())
    client = redis_client(cfg)
    assert len(list(client.scan_iter(match="diam:tls:u:*"))) == 5
    _api_recommends(tmp_path, client, "tls-api")
    # without the CA the server's certificate is not trusted; plain redis:// is reset
    for bad, setting in ((RedisConfig(url=cfg.url), "DIAM_REDIS_SSL_CA_CERTS"),
                         (RedisConfig(url=f"redis://127.0.0.1:{tls_redis}/0"), "rediss://")):
        with pytest.raises(ServiceConfigError, match=setting):
            run_online(_job(stack.settings.kafka, bad, topic, "tls"), _holder())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_kafka_sasl_for_the_dataflow(stack, sasl_broker, namespace, redis_client, mechanism) -> None:
    kafka = _sasl(sasl_broker, "diam-secret", mechanism)
    topic = f"sasl.{namespace}"
    _events(kafka, topic, n_users=4)
    run_online(_job(kafka, stack.settings.redis, topic, namespace), _holder())
    assert len(list(redis_client.scan_iter(match=f"diam:{namespace}:u:*"))) == 4
    with pytest.raises(ServiceConfigError, match="DIAM_KAFKA_SASL_PASSWORD"):
        run_online(_job(_sasl(sasl_broker, "wrong", mechanism), stack.settings.redis, topic, namespace),
                   _holder())


def test_the_start_line_does_not_print_the_redis_password(stack, topic, acl_redis, tmp_path) -> None:
    """A password in DIAM_REDIS_URL reaches Redis but not stdout (start lines end up in logs)."""
    import subprocess
    import sys

    from tests.integration.helpers import run_env, write_tiny_checkpoint

    _events(stack.settings.kafka, topic)
    ckpt = tmp_path / "ck"
    write_tiny_checkpoint(ckpt)
    env = run_env(stack, topic, {"DIAM_REDIS_URL": f"redis://diam:s3cret@127.0.0.1:{acl_redis}/0"})
    run = subprocess.run([sys.executable, "-m", "diam", "run", "--bounded", "--no-recovery",
                          "--topic", topic, "--checkpoint", str(ckpt), "--namespace", "aclpw"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    start = next(x for x in run.stdout.splitlines() if x.startswith("online dataflow:"))
    assert f"redis://diam:***@127.0.0.1:{acl_redis}/0" in start, start
    assert "s3cret" not in run.stdout + run.stderr
    cfg = RedisConfig(url=f"redis://127.0.0.1:{acl_redis}/0", username="diam", password="s3cret")
    assert len(list(redis_client(cfg).scan_iter(match="diam:aclpw:u:*"))) == 5  # it did write
