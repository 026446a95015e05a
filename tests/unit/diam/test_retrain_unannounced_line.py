"""What a retrain says when Redis did not take its publish: the service retries the
announcement and says so; a single retrain (``diam retrain --once``) leaves no service behind,
so its line says how to finish the job instead of promising a retry (it said "the service
re-syncs it ... with backoff" and then exited 1)."""

from __future__ import annotations

from diam.retrain import Retrainer


def _retrainer(isolated_env, tmp_path):  # type: ignore[no-untyped-def]
    from diam.settings import load_settings

    isolated_env.setenv("DIAM_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    said: list[str] = []
    return Retrainer(load_settings(), log_line=said.append), said


def test_a_single_retrain_names_the_command_that_announces_its_version(
        isolated_env, tmp_path) -> None:
    r, said = _retrainer(isolated_env, tmp_path)
    r._sync_failed("published V1 on disk, but it is not announced in Redis (refused)", "V1")
    (line,) = said
    assert "this single retrain does not retry it" in line, line
    assert "`diam snapshot rollback V1` once Redis answers" in line
    assert "re-syncs" not in line and "with backoff" not in line


def test_the_service_says_it_retries(isolated_env, tmp_path) -> None:
    r, said = _retrainer(isolated_env, tmp_path)
    r._service = True  # as serve() sets it
    r._sync_failed("Redis down", "V1")
    r._sync_failed("Redis down", "V1")  # once per state change, not per try
    (line,) = said
    assert f"the service re-syncs it from {tmp_path / 'snaps'}/ACTIVE with backoff" in line
