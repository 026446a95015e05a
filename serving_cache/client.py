"""A small Python client of the recommendation API (``diam serve``), over httpx with keep-alive.

>>> c = DiamClient("http://127.0.0.1:8088")
>>> c.base_url
'http://127.0.0.1:8088'
>>> c.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["DiamClient", "ApiError"]


class ApiError(RuntimeError):
    """A non-2xx answer; ``status`` and the server's ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class DiamClient:
    """``recommendations``, ``interests`` and ``health`` as plain dicts (the API's JSON)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8088", timeout_s: float = 2.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def _get(
        self, path: str, params: dict[str, Any] | list[tuple[str, Any]] | None = None
    ) -> dict[str, Any]:
        r = self._http.get(path, params=params)
        body = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        )
        if r.status_code >= 400:
            # Errors carry ``detail``; /health's 503 carries the health body itself.
            raise ApiError(
                r.status_code, body.get("detail", body) if isinstance(body, dict) else body
            )
        if not isinstance(body, dict):
            raise ApiError(r.status_code, f"expected a JSON object, got: {str(body)[:200]}")
        return body

    def recommendations(
        self,
        user_id: str,
        n: int = 20,
        mode: str = "auto",
        delta: float = 0.0,
        hour: int | None = None,
        device: str | None = None,
        seen: Sequence[str] = (),
        exclude_seen: bool = True,
    ) -> dict[str, Any]:
        params: list[tuple[str, Any]] = [
            ("n", n),
            ("mode", mode),
            ("exclude_seen", str(exclude_seen).lower()),
        ]
        if delta:
            params.append(("delta", delta))
        if hour is not None:
            params.append(("hour", hour))
        if device is not None:
            params.append(("device", device))
        params += [("seen", s) for s in seen]
        return self._get(f"/users/{user_id}/recommendations", params)

    def interests(self, user_id: str, top: int = 5) -> dict[str, Any]:
        return self._get(f"/users/{user_id}/interests", {"top": top})

    def health(self) -> dict[str, Any]:
        """The health body; raises ApiError (status 503) when the service is unavailable."""
        return self._get("/health")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DiamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
