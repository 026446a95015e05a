"""``diam produce --catalog`` writes the catalogue to a catalogue only: an existing
``--items-topic`` that is not compacted (a clicks topic) is refused before anything is written,
naming its cleanup.policy and record count; a missing one is created compacted
(``streams.not_for_catalogue``)."""

from __future__ import annotations

from click.testing import CliRunner

from diam.cli import main
from online_model.synth import SynthParams, write_synth
from streams.catalog import read_catalog
from streams.events import ClickEvent, encode_event
from streams.kafka_io import delete_topics, topic_config, watermarks
from streams.producer import produce_raw


def _held(kafka, topic: str) -> int:  # type: ignore[no-untyped-def]
    return sum(hi - lo for lo, hi in watermarks(kafka, topic).values())


def test_a_clicks_topic_as_items_topic_is_refused_and_a_missing_one_created_compacted(
        stack, topic, tmp_path) -> None:
    kafka = stack.settings.kafka
    data = tmp_path / "synth"
    write_synth(SynthParams(users=5, items=20, categories=4, events_per_user=4, seed=1,
                            max_interests=2), data)
    clicks = [(f"u{i}".encode(), encode_event(ClickEvent(f"u{i}", "i1", 1_700_000_000_000)))
              for i in range(3)]
    assert produce_raw(kafka, topic, clicks).ok  # `topic`: a clicks topic, not the configured one
    target, fresh = f"{topic}.target", f"{topic}.items"
    try:
        r = CliRunner().invoke(main, ["produce", "--data", str(data), "--topic", target,
                                      "--catalog", "--items-topic", topic, "--no-progress"],
                               obj={"settings": stack.settings})
        errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
        assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output, r.output
        for words in (topic, "--items-topic", "not compacted (cleanup.policy=delete)",
                      "holds 3 records", "nothing was written"):
            assert words in errors[0], (words, r.output)
        assert _held(kafka, topic) == 3  # no catalogue record
        assert target not in _topics(kafka)  # no click either: refused before anything

        r = CliRunner().invoke(main, ["produce", "--data", str(data), "--topic", target,
                                      "--catalog", "--items-topic", fresh, "--limit", "0",
                                      "--no-progress"], obj={"settings": stack.settings})
        assert r.exit_code == 0, r.output
        assert topic_config(kafka, fresh)["cleanup.policy"] == "compact"
        assert len(read_catalog(kafka, fresh)) == 20
    finally:
        delete_topics(kafka, [target, fresh])


def _topics(kafka) -> set[str]:  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return set(AdminClient(kafka.client_config()).list_topics(timeout=10).topics)
