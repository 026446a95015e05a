"""The local stack's rendering and process plumbing, without starting Kafka or Redis."""

from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from string import Template

import pytest

from diam import stack_kafka as kafka
from diam.settings import StackConfig, load_settings
from diam.stack import StackPaths, addresses
from diam.stack_proc import (
    free_port,
    owned_pid,
    pid_alive,
    pids_with_marker,
    port_open,
    spawn,
    tail,
    terminate,
)

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_server_properties_single_node_kraft_on_loopback() -> None:
    cfg = StackConfig(kafka_port=19001, controller_port=19002)
    props = _props(kafka.render_server_properties(cfg, Path("/x/data"), 3))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19001,CONTROLLER://127.0.0.1:19002"
    assert props["advertised.listeners"].startswith("PLAINTEXT://127.0.0.1:19001")
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19002"
    assert props["log.dirs"] == "/x/data"
    assert props["num.partitions"] == "3"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert "$" not in "".join(props.values())


def test_pom_names_broker_tools_and_log4j2_backend() -> None:
    cfg = StackConfig(kafka_version="4.1.1", log4j_version="2.25.3", slf4j_version="2.0.17")
    root = ET.fromstring(kafka.render_pom(cfg))
    deps = {
        (d.findtext("m:groupId", namespaces=POM_NS), d.findtext("m:artifactId", namespaces=POM_NS)):
        d.findtext("m:version", namespaces=POM_NS)
        for d in root.iterfind("m:dependencies/m:dependency", POM_NS)
    }
    assert deps[("org.apache.kafka", "kafka_2.13")] == "4.1.1"
    assert deps[("org.apache.kafka", "kafka-tools")] == "4.1.1"
    assert deps[("org.apache.logging.log4j", "log4j-core")] == "2.25.3"
    assert deps[("org.apache.logging.log4j", "log4j-slf4j2-impl")] == "2.25.3"
    assert deps[("org.slf4j", "slf4j-api")] == "2.0.17"


def test_redis_conf_renders_with_an_append_only_file(tmp_path: Path) -> None:
    text = Template(kafka.resource("redis.conf")).substitute(
        port=16001, logfile=tmp_path / "r.log", dir=tmp_path)
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in text.splitlines()
             if line and not line.startswith("#")}
    assert lines["bind"] == "127.0.0.1"
    assert lines["port"] == "16001"
    assert lines["save"] == '""'
    assert lines["appendonly"] == "yes"
    assert lines["appendfsync"] == "everysec"
    assert lines["dir"] == f'"{tmp_path}"'


def test_log4j2_config_is_properties_and_keeps_shutdown_logs() -> None:
    props = _props(kafka.resource("log4j2.properties"))
    assert props["appender.file.fileName"] == "${sys:kafka.logs.dir}/server.log"
    assert props["shutdownHook"] == "disable"
    assert props["appender.file.append"] == "true"


def test_jvm_args_bound_the_heap(tmp_path: Path) -> None:
    cfg = StackConfig(kafka_heap="300m", java="/opt/java")
    args = kafka.jvm_args(cfg, [tmp_path / "a.jar", tmp_path / "b.jar"], tmp_path, tmp_path / "l")
    assert args[0] == "/opt/java"
    assert "-Xmx300m" in args and "-XX:+UseSerialGC" in args
    assert args[-1] == f"{tmp_path / 'a.jar'}{os.pathsep}{tmp_path / 'b.jar'}"


def test_settings_overrides_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIAM_STACK_KAFKA_PORT", "19555")
    monkeypatch.setenv("DIAM_STACK_CACHE_DIR", str(tmp_path))
    s = load_settings(stack={"home": str(tmp_path / "h"), "redis_port": 16555})
    assert addresses(s) == ("127.0.0.1:19555", "redis://127.0.0.1:16555/0")
    assert kafka.kafka_dir(s.stack) == tmp_path / f"kafka-{s.stack.kafka_version}"
    assert StackPaths.of(s.stack).server_properties == tmp_path / "h/kafka/server.properties"


def test_cache_incomplete_until_classpath_written(tmp_path: Path) -> None:
    cfg = StackConfig(cache_dir=str(tmp_path))
    lib = kafka.kafka_dir(cfg) / "lib"
    lib.mkdir(parents=True)
    jar = lib / "kafka_2.13-4.1.1.jar"
    jar.write_bytes(b"")
    assert kafka.cached_classpath(cfg) is None  # an interrupted download is not a cache
    (kafka.kafka_dir(cfg) / "classpath.txt").write_text(f"{jar}\n")
    assert kafka.cached_classpath(cfg) == [jar]
    jar.unlink()
    assert kafka.cached_classpath(cfg) is None


def test_cluster_ids_are_valid_and_distinct() -> None:
    ids = {kafka.new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_broker_version_takes_the_last_start(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("INFO Kafka version: 4.0.0 (x)\nnoise\nINFO Kafka version: 4.1.1 (x)\n")
    assert kafka.broker_version(log) == "4.1.1"
    assert kafka.broker_version(tmp_path / "missing.log") is None


def test_spawned_process_outlives_and_stops(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker.conf")
    pid_file = tmp_path / "x.pid"
    # The marker sits on the command line, as the config path does for Kafka and Redis.
    pid = spawn([sys.executable, "-c", "import time; time.sleep(60)", marker],
                tmp_path / "x.out", pid_file)
    try:
        assert owned_pid(pid_file, marker) == pid
        assert os.getpgid(pid) == pid  # own session: survives the launching shell
        assert pids_with_marker(marker) == [pid]
        assert owned_pid(pid_file, "not-our-marker") is None  # a recycled pid is not ours
    finally:
        killed = terminate(pid, timeout_s=10)
    assert not killed  # it obeyed SIGTERM
    assert not pid_alive(pid)
    assert pids_with_marker(marker) == []


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pid = spawn([sys.executable, "-c", code], tmp_path / "y.out", tmp_path / "y.pid")
    time.sleep(0.5)  # let it install the handler
    assert terminate(pid, timeout_s=0.5)
    assert not pid_alive(pid)


def test_ports_and_tail(tmp_path: Path) -> None:
    assert not port_open(free_port())
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "none.log") == ""
