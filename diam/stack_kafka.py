"""The Kafka half of the local stack: jars from Maven Central, configuration, storage format,
the broker's command line, and probes (metadata request, version from the broker's log).

The jars are resolved once into ``<cache_dir>/kafka-<version>/lib`` with
``mvn dependency:copy-dependencies`` on a generated POM, then reused by every stack home.
"""

from __future__ import annotations

import base64
import importlib.resources
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any

from diam.settings import StackConfig

DEPENDENCY_PLUGIN_VERSION = "3.8.1"
"""maven-dependency-plugin pinned so the resolution does not depend on Maven's default."""

_COMPLETE = "classpath.txt"  # written last: its presence means the lib dir is whole
_VERSION_RE = re.compile(r"Kafka version: (\S+)")


class StackError(Exception):
    """The local stack could not do what was asked; the message says why and what to do."""


def resource(name: str) -> str:
    """Text of a file in ``diam/resources``."""
    return importlib.resources.files("diam.resources").joinpath(name).read_text()


def render_pom(cfg: StackConfig) -> str:
    """The POM whose runtime dependencies are the broker's class path.

    >>> "<version>4.1.1</version>" in render_pom(StackConfig(kafka_version="4.1.1"))
    True
    """
    return Template(resource("pom.xml")).substitute(
        kafka_version=cfg.kafka_version,
        log4j_version=cfg.log4j_version,
        slf4j_version=cfg.slf4j_version,
        dependency_plugin_version=DEPENDENCY_PLUGIN_VERSION,
    )


def render_server_properties(cfg: StackConfig, data_dir: Path, partitions: int) -> str:
    """``server.properties`` of a combined broker + controller on loopback.

    >>> text = render_server_properties(StackConfig(), Path("/d"), 4)
    >>> "listeners=PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193" in text
    True
    """
    return Template(resource("server.properties")).substitute(
        kafka_port=cfg.kafka_port,
        controller_port=cfg.controller_port,
        data_dir=str(data_dir),
        partitions=partitions,
    )


def with_sasl_plain(properties: str, users: dict[str, str], scram: bool = False) -> str:
    """``server.properties`` of :func:`render_server_properties` with its client listener
    turned into SASL_PLAINTEXT (mechanism PLAIN) accepting ``users`` (name -> password); the
    first user is also the broker's own identity on that listener. ``scram`` also enables
    SCRAM-SHA-256, whose credentials live in the cluster metadata (give the same users to
    :func:`format_storage`).

    >>> text = with_sasl_plain(render_server_properties(StackConfig(), Path("/d"), 1), {"a": "p"})
    >>> "listeners=SASL_PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193" in text
    True
    >>> 'user_a="p"' in text
    True
    """
    if not users:
        raise ValueError("SASL needs at least one user")
    for name, pw in users.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or '"' in pw or "\\" in pw:
            raise ValueError(f"unsupported SASL user or password for {name!r}")
    first, first_pw = next(iter(users.items()))
    out = []
    for line in properties.splitlines():
        key = line.split("=", 1)[0]
        if key in ("listeners", "advertised.listeners"):
            line = line.replace("PLAINTEXT://", "SASL_PLAINTEXT://")
        elif key == "inter.broker.listener.name":
            line = "inter.broker.listener.name=SASL_PLAINTEXT"
        elif key == "listener.security.protocol.map":
            line = "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        out.append(line)
    accounts = " ".join(f'user_{n}="{p}"' for n, p in users.items())
    out += ["", "# SASL/PLAIN on the client listener (diam.stack_kafka.with_sasl_plain)",
            "sasl.enabled.mechanisms=PLAIN" + (",SCRAM-SHA-256" if scram else ""),
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{first}" password="{first_pw}" {accounts};']
    if scram:
        out.append("listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config="
                   "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    return "\n".join(out) + "\n"


def kafka_dir(cfg: StackConfig) -> Path:
    """``<cache_dir>/kafka-<version>``: the generated POM and ``lib/``."""
    return Path(cfg.cache_dir).expanduser() / f"kafka-{cfg.kafka_version}"


def cached_classpath(cfg: StackConfig) -> list[Path] | None:
    """The cached jars, or None when they were never (completely) fetched."""
    marker = kafka_dir(cfg) / _COMPLETE
    if not marker.is_file():
        return None
    jars = [Path(line) for line in marker.read_text().splitlines() if line.strip()]
    if not jars or not all(j.is_file() for j in jars):
        return None
    return jars


def fetch_jars(
    cfg: StackConfig, on_download: Callable[[str], None] | None = None
) -> list[Path]:
    """Resolve Kafka with its runtime dependencies into the cache (once) and return the jars.

    Tries Maven offline first (everything may already be in ``~/.m2``), then online. The lib
    directory is filled under a temporary name and renamed, so an interrupted download is never
    mistaken for a complete one. ``on_download`` is called with each artifact Maven downloads.
    """
    jars = cached_classpath(cfg)
    if jars is not None:
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found: install Maven (apt-get install maven) to fetch Kafka")
    root = kafka_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    pom = root / "pom.xml"
    pom.write_text(render_pom(cfg))
    tmp = root / "lib.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    base = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    out = ""
    for extra in (["-o", "-q"], []):
        proc = subprocess.Popen(base + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if on_download and "Downloaded from" in line:  # "[INFO] Downloaded from central: <url> (...)"
                on_download(line.split("Downloaded from", 1)[1].strip())
        if proc.wait() == 0:
            break
        out = "".join(lines[-30:])
    else:
        raise StackError(
            f"could not resolve org.apache.kafka:kafka_2.13:{cfg.kafka_version} with Maven "
            f"(is the version served? set DIAM_STACK_KAFKA_VERSION):\n{out}"
        )
    lib = root / "lib"
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    jars = sorted(lib.glob("*.jar"))
    if not any(j.name.startswith("kafka_2.13-") for j in jars):
        raise StackError(f"Maven finished but {lib} holds no kafka_2.13 jar")
    (root / _COMPLETE).write_text("".join(f"{j}\n" for j in jars))
    return jars


def java_exe(cfg: StackConfig) -> str:
    """The Java executable: the setting, else ``$JAVA_HOME/bin/java``, else ``java``."""
    if cfg.java:
        return cfg.java
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise StackError("java not found: install a Java 17+ runtime "
                         "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    return found


def jvm_args(cfg: StackConfig, classpath: list[Path], logs_dir: Path, log4j_conf: Path) -> list[str]:
    """JVM command prefix shared by the broker and the storage tool: a bounded heap (the JVM's
    default would be a quarter of the machine's memory) plus ``cfg.kafka_jvm_opts``."""
    return [
        java_exe(cfg),
        f"-Xmx{cfg.kafka_heap}",
        "-Xms64m",
        *cfg.kafka_jvm_opts,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={logs_dir}",
        f"-Dlog4j2.configurationFile={log4j_conf}",
        "-cp",
        os.pathsep.join(str(j) for j in classpath),
    ]


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding, as
    ``kafka-storage random-uuid`` prints (never starting with '-', which a command line would
    take for an option).

    >>> len(new_cluster_id())
    22
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def is_formatted(data_dir: Path) -> bool:
    """Whether the storage tool already formatted ``data_dir``."""
    return (data_dir / "meta.properties").is_file()


def format_storage(java_prefix: list[str], server_properties: Path, cluster_id: str,
                   scram_users: dict[str, str] | None = None) -> None:
    """Format the log directory once: ``kafka.tools.StorageTool format --standalone``;
    ``scram_users`` (name -> password) get SCRAM-SHA-256 credentials in the bootstrap metadata."""
    cmd = java_prefix + ["kafka.tools.StorageTool", "format", "--standalone",
                         "-t", cluster_id, "-c", str(server_properties)]
    for name, pw in (scram_users or {}).items():
        cmd += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={pw}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise StackError(f"kafka StorageTool format failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def broker_version(server_log: Path) -> str | None:
    """The Kafka version the running broker logged at startup (``AppInfoParser``), or None.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "server.log"
    >>> _ = p.write_text("[x] INFO Kafka version: 4.1.1 (org.apache.kafka.common.utils.AppInfoParser)\\n")
    >>> broker_version(p)
    '4.1.1'
    """
    try:
        text = server_log.read_text(errors="replace")
    except OSError:
        return None
    found = _VERSION_RE.findall(text)
    return found[-1] if found else None


def _quiet_logger() -> logging.Logger:
    # librdkafka logs every refused connection to stderr while the broker starts; route them to
    # a logger nobody prints.
    log = logging.getLogger("diam.stack.rdkafka")
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


def metadata(client: str | dict[str, str], timeout_s: float = 5.0) -> dict[str, object] | None:
    """Ask the broker for metadata and its cluster description; None when it does not answer.
    ``client`` is a bootstrap address or a full librdkafka configuration (security included)."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": client} if isinstance(client, str) else dict(client)
    conf.update({"socket.timeout.ms": 3000, "logger": _quiet_logger()})
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=timeout_s)
        cluster = admin.describe_cluster(request_timeout=timeout_s).result(timeout=timeout_s)
    except Exception:
        return None
    return {
        "cluster_id": cluster.cluster_id,
        "brokers": len(md.brokers),
        "topics": len([t for t in md.topics if not t.startswith("__")]),
        "controller": cluster.controller.id if cluster.controller else None,
    }
