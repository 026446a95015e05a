"""Every float option of every ``diam`` command refuses NaN and inf as a usage error (click's
FloatRange lets NaN through its bounds, and an unbounded side lets inf through): was, e.g.
``diam train --leave-newest nan`` a ValueError traceback after loading the data, ``diam
evaluate --delta nan`` an IndexError, ``diam evaluate-stream --warm-frac nan`` "cannot convert
float NaN to integer", ``--user-fraction nan`` the wrong message "too small". The one rule is
:func:`diam.commands.finite`; this sweep finds an option that forgot it."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from diam.cli import main


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def _float_options() -> list[tuple[str, str, click.Command, click.Option]]:
    return [(where, p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0], cmd, p)
            for where, cmd in _commands(main) for p in cmd.params
            if isinstance(p, click.Option) and isinstance(p.type, click.types.FloatParamType)]


def _refuses(cmd: click.Command, opt: click.Option, value: str) -> bool:
    ctx = click.Context(cmd, info_name=cmd.name)
    try:
        with ctx:
            opt.process_value(ctx, value)
    except click.BadParameter:
        return True
    return False


def test_the_sweep_sees_the_float_options() -> None:
    names = {(w, o) for w, o, _, _ in _float_options()}
    assert {("train", "--lr"), ("evaluate-stream", "--warm-frac"), ("data synth", "--zipf")} <= names


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_option_refuses_a_non_finite_value(value: str) -> None:
    let_through = {(w, o) for w, o, cmd, opt in _float_options()
                   if not _refuses(cmd, opt, value)}
    assert let_through == set()


def test_a_nan_fraction_is_a_usage_error_not_a_traceback(run, tmp_path) -> None:
    for args in (["train", "--leave-newest", "nan"], ["evaluate", "--delta", "nan"],
                 ["evaluate-stream", "--warm-frac", "nan"],
                 ["evaluate-stream", "--user-fraction", "nan"]):
        r = run(*args, "--data" if args[0] != "evaluate" else "--checkpoint",
                str(tmp_path / "none"))
        assert r.exit_code == 2 and f"Invalid value for '{args[1]}'" in r.output, (args, r.output)
        assert "must be a finite number" in r.output, (args, r.output)
