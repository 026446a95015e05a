"""One open-loop HTTP client of ``bench/serve.py``'s load sweep, run as its own process.

It reads one JSON line on stdin: ``{"port", "paths": [...], "picks": [...], "offsets": [...],
"timeout_s", "deadline_s"}`` (request ``i`` asks ``paths[picks[i]]`` at ``offsets[i]`` seconds
after the start), opens one keep-alive connection, prints ``ready``, reads the start time (a
``time.monotonic()`` value, the same clock in every process of the machine) and then follows
its timetable: each request is sent at its scheduled time or, when the previous answer is late,
as soon as it arrives. Latency is measured from the scheduled time, not from the send, so a
slow answer counts against every request it delays (no coordinated omission); the time from
the send is reported too (``service``). A request that fails (a non-200 answer, a timeout, a
dropped connection) is counted by kind and the connection is re-opened. At ``deadline_s``
after the start the client stops: the requests it has not sent by then are counted as
``unsent`` (an offered rate above what the server answers builds a backlog that would otherwise
take minutes to drain, and the step's time would have no bound).

The collector is disabled while the timetable runs: a pause of the measuring client would be
counted against the server. Prints one JSON line: ``{"latency", "service", "errors", "unsent",
"start", "end"}`` (seconds).

Only the standard library: a client that costs little leaves the two cores to the server.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import sys
import time


def _connect(port: int, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    port, timeout = int(spec["port"]), float(spec["timeout_s"])
    deadline_s = float(spec.get("deadline_s", float("inf")))
    paths, picks, offsets = spec["paths"], spec["picks"], spec["offsets"]
    conn = _connect(port, timeout)
    conn.request("GET", "/health")
    conn.getresponse().read()
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    latency: list[float] = []
    service: list[float] = []
    errors: dict[str, int] = {}
    stop_at = t0 + deadline_s
    unsent = 0
    gc.disable()
    for k, (pick, off) in enumerate(zip(picks, offsets, strict=True)):
        due = t0 + off
        now = time.monotonic()
        if now >= stop_at:
            unsent = len(picks) - k
            break
        if now < due:
            time.sleep(due - now)
        sent = time.monotonic()
        try:
            conn.request("GET", paths[pick])
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors[str(r.status)] = errors.get(str(r.status), 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()
            conn = _connect(port, timeout)
        done = time.monotonic()
        latency.append(done - due)
        service.append(done - sent)
    gc.enable()
    conn.close()
    print(json.dumps({"latency": latency, "service": service, "errors": errors, "unsent": unsent,
                      "start": t0, "end": time.monotonic()}), flush=True)


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes no file: the timetable comes on stdin, the result goes to stdout.",
    ).parse_args()
    main()
