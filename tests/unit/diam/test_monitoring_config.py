"""The compose stack's Prometheus scrape config and Grafana dashboard agree with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streams.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[3]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/diam-stream.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(diam_[a-z_]+)", e)}
    flow = {m for m in used if m.startswith("diam_flow_")}
    known = set(METRIC_NAMES) | {f"{n}_bucket" for n in METRIC_NAMES}
    assert flow and flow <= known, flow - known
    # the API's, the drift monitor's and the retrain service's names, as their registries define
    api = "".join((ROOT / f).read_text() for f in
                  ("serving_cache/api.py", "streams/drift_flow.py", "diam/retrain.py"))
    for m in used - flow:
        base = re.sub(r"_(total|bucket)$", "", m)
        assert f'"{base}"' in api or f'"{m}"' in api, m
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert uids == {d["uid"] for d in ds["datasources"]}


def test_scrape_targets_are_the_compose_services_and_their_metrics_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    services = compose["services"]
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services, target
            cmd = " ".join(services[host]["command"])
            env = services[host].get("environment", {})
            assert f"--metrics-port {port}" in cmd or env.get("DIAM_SERVE_PORT") == port, target
    mounts = {v.split(":")[0] for s in ("prometheus", "grafana") for v in services[s]["volumes"]}
    for m in mounts:
        assert (ROOT / m).exists(), m
    assert "http://online:9108/metrics" in services["serve"]["command"]


def test_every_compose_service_with_a_metrics_port_is_scraped() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped = {t for job in prom["scrape_configs"] for t in job["static_configs"][0]["targets"]}
    for name, svc in compose["services"].items():
        cmd = svc.get("command") or []
        if "--metrics-port" in cmd:
            port = cmd[cmd.index("--metrics-port") + 1]
            assert f"{name}:{port}" in scraped, f"{name} exports metrics on :{port}, not scraped"


def test_the_image_build_context_leaves_out_local_state() -> None:
    """The compose build's context is the checkout: .dockerignore keeps every ignored local
    directory out of it (the stack's .diam/ alone is gigabytes), and the image copies nothing
    it leaves out."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    git_dirs = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.strip().endswith("/") and line.strip() != "__pycache__/"}
    assert {".git/", *git_dirs} <= ignored, {".git/", *git_dirs} - ignored
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    build = compose["x-app"]["build"]["dockerfile_inline"]
    copied = {w.rstrip("*").rstrip("/") for line in build.splitlines()
              if line.strip().startswith("COPY") for w in line.split()[1:-1]}
    assert copied and not {c for c in copied if f"{c}/" in ignored or c in ignored}, copied
