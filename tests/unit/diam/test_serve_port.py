"""``diam serve`` on an address that is taken: the refusal comes before "serving on" is said
(it printed the line, then uvicorn's error, then exited 3)."""

from __future__ import annotations

import socket

import click
import pytest

from diam.server import ServeOptions, serve
from diam.settings import load_settings


def test_a_taken_port_is_refused_before_serving_is_announced(monkeypatch) -> None:
    import diam.server as server

    monkeypatch.setattr(server, "build_app", lambda *a, **k: pytest.fail("app built"))
    said: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        with pytest.raises(click.ClickException, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(load_settings(), ServeOptions(namespace="unit"), "127.0.0.1", port,
                  echo=said.append)
    assert said == []
