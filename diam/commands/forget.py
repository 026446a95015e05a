"""``diam forget``: remove users from Redis (every namespace) and from the dataflow's state."""

from __future__ import annotations

from typing import Any

import click

from diam.commands import get_settings, kafka_unusable, topic_name


@click.command("forget")
@click.argument("users", nargs=-1)
@click.option("--topic", default=None, callback=topic_name,
              help="Clicks topic whose dataflows must forget the users (default: settings "
                   "kafka.clicks_topic). The configured catalogue, dead-letter, drift, alerts "
                   "and models topics and any compacted topic are refused.")
@click.option("--redis-only", is_flag=True, default=False,
              help="Only delete the Redis keys; write no tombstone to the clicks topic and "
                   "record no marker: a dataflow that holds the user pushes them again.")
@click.option("--restore-markers", is_flag=True, default=False,
              help="Forget no one: restore TOPIC's markers into Redis from their durable copy "
                   "(settings kafka.forgotten_topic) and write to that copy those Redis holds "
                   "that it lacks; say how many. Every run, replay and forget does it at its "
                   "start anyway, and a running dataflow when it finds the key set lost.")
@click.pass_context
def forget_cmd(ctx: click.Context, users: tuple[str, ...], topic: str | None, redis_only: bool,
               restore_markers: bool) -> None:
    """Forget USERS: write a tombstone (the user id as key, no value) to the clicks topic,
    record its offset on the compacted markers' topic (settings kafka.forgotten_topic,
    default diam.forgotten; created compacted by the first forget; one record per topic id
    and user, kept for good) and in Redis (hash diam::forgotten:TOPIC:TOPIC_ID, TOPIC_ID
    being Kafka's id of the topic that holds the name now; field = user id), then delete the
    users' vectors in every Redis namespace. A user named twice is forgotten once. Each user's
    line names the namespaces that held them when the tombstone was written, those whose key
    a running dataflow had already removed (it reads the tombstone) said so.

    \b
    When Redis loses its data (a restart without persistence, FLUSHALL, a failover to an
    empty replica), the markers' hash is restored from the markers' topic (a user's higher
    offset wins, so nothing is lowered, doubled or lost, and a forget made meanwhile holds):
    - at the start of every diam run, diam replay and diam forget, before anything is
      written;
    - in a running diam run, when its writer finds the key set lost (the namespace's
      generation marker), before it pushes its users again;
    - on demand: diam forget --restore-markers [--topic TOPIC].
    Markers Redis holds that the topic lacks (recorded by a release before it, or by a forget
    whose record failed) are written to it at the same points.

    \b
    What is guaranteed once it returns:
    - no namespace holds a value learnt from the users' clicks before the tombstone, and
      none is written again: every dataflow and replay of TOPIC (a run resumed from its
      recovery store, one lagging behind the tombstone, a replay into a new namespace of a
      range that ends before it) has such a push refused by Redis (counted as "refused as
      forgotten"); on Redis Cluster that check is read just before the write, and a push
      racing this command can come back until the dataflow reads the tombstone;
    - a dataflow of TOPIC drops the users' state when it reads the tombstone (at its next
      epoch the recovery store no longer holds them); a replay forgets them at the same point;
    - clicks the users make after the tombstone start a new state, learnt and pushed as a
      new user's.

    A topic deleted and created again under the same name has a new topic id: the old
    topic's markers do not bind it (its offsets start at 0 again): the forgotten users'
    clicks on the new topic are learnt and pushed, while their older pushes stay refused.

    \b
    Upgrading from the release that kept markers by name alone (diam::forgotten:TOPIC):
    - they belong to the topic holding the name when this release first sees them: this
      command, diam run and diam replay copy them under its id (one line says so) and write
      that id into the name-only hash (field ":adopted-by"); each later start copies again
      what an earlier release's forget added meanwhile; a topic recreated since ignores them
      (one line says so);
    - the name-only hash is kept, and this command writes its markers there too while it is
      the topic's, so a diam run or replay of the earlier release still refuses the users;
      delete it (redis-cli DEL diam::forgotten:TOPIC) once no process of the earlier
      release runs;
    - a marker an earlier release's forget writes reaches this release's running dataflows
      only at their next start: during a rolling upgrade, forget with this release.

    Not covered: the users' older clicks stay in the topic until its retention removes them;
    a dataflow of another topic carrying the same users is not told (forget on that topic
    too); a dataflow still running while its topic is deleted and created again checks the
    old topic's markers until it is restarted; a broker without topic ids (before Kafka
    2.8) keeps the markers by name (delete the hash after recreating the topic); --redis-only
    writes no tombstone and no marker; the markers' topic deleted, or markers whose hash
    Redis lost before a release with that topic first started (forget those users again).

    Only a clicks topic takes the tombstones: on the compacted item catalogue a null value
    deletes the item keyed by the same id, so the configured side topics and any compacted
    topic are refused before anything is written or deleted.
    """
    from confluent_kafka import KafkaException, Producer

    from serving_cache import redis_client
    from serving_cache.keys import namespace_of_key
    from serving_cache.namespaces import user_keys_everywhere
    from streams.events import validate_user_id
    from streams.online import forget_target

    s = get_settings(ctx)
    if restore_markers and (users or redis_only):
        raise click.UsageError("--restore-markers forgets no one: give it without USERS and "
                               "without --redis-only")
    if not users and not restore_markers:
        raise click.UsageError("Missing argument 'USERS...' (or --restore-markers)")
    bad = [u for u in users if forget_target(u.encode()) is None]
    if bad:
        raise click.BadParameter("not valid user ids: " + "; ".join(
            f"{u!r} ({validate_user_id(u) or 'user_id: refused'})" for u in bad[:5])
            + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            + " (nothing was written)", param_hint="USERS")
    users = tuple(dict.fromkeys(users))  # one tombstone and one line per user, named twice or not
    topic = topic if topic is not None else s.kafka.clicks_topic
    client = redis_client(s.redis)
    before: dict[str, list[bytes]] = {}
    unrecorded: Exception | None = None
    undelivered: list[str] = []
    left = 0
    if not redis_only:
        from serving_cache.forgotten import MarkersUnusable, record_markers
        from streams import not_for_clicks
        from streams.forget_markers import forget_markers_of, write_markers
        from streams.kafka_io import UnknownTopic

        try:  # producing to a misspelt topic would create it, and no dataflow would forget them
            refused = not_for_clicks(s.kafka, topic)
        except UnknownTopic as exc:
            raise click.BadParameter(f"{exc}; the Redis keys were not touched (--redis-only "
                                     "deletes them alone)", param_hint="--topic") from None
        except (KafkaException, RuntimeError) as exc:
            raise kafka_unusable(s, exc) from None
        if refused is not None:
            raise click.BadParameter(f"{refused}: nothing was written and the Redis keys were "
                                     "not touched", param_hint="--topic")
        try:  # the markers belong to the topic the name holds now, not to an earlier one
            adoption = forget_markers_of(s.kafka, client, topic)
        except UnknownTopic as exc:  # deleted since the check above
            raise click.BadParameter(f"{exc}; the Redis keys were not touched",
                                     param_hint="--topic") from None
        except MarkersUnusable as exc:  # before any tombstone: a forget half done is worse
            raise click.ClickException(f"{exc}; no tombstone was written and the Redis keys "
                                       "were not touched") from None
        except (KafkaException, RuntimeError, TimeoutError) as exc:  # TimeoutError: RangeStalled
            raise kafka_unusable(s, exc) from None
        if (notice := adoption.line()) is not None:
            click.echo(notice)
        if restore_markers:
            if notice is None:
                click.echo(f"the forget markers of {topic} in Redis and on "
                           f"{s.kafka.forgotten_topic} agree: nothing to restore")
            return
        errors: list[str] = []
        offsets: dict[str, int] = {}

        def delivered(err: object, msg: object) -> None:
            if err:
                errors.append(str(err))
            else:
                offsets[msg.key().decode()] = msg.offset()  # type: ignore[attr-defined]

        # the keys as they are before the tombstone: a running dataflow that reads it deletes
        # the user's key itself, often before this command's own delete comes
        before = user_keys_everywhere(client, users)
        p = Producer({**s.kafka.client_config(), "enable.idempotence": "true"})
        for u in users:
            p.produce(topic, key=u.encode(), value=None, on_delivery=delivered)
        left = p.flush(30)
        # the users whose tombstone was not confirmed: a partial forget goes on for the others
        # (their tombstones are in the topic: a dataflow drops them, so their markers must be
        # recorded too), and the command fails at its end naming these
        undelivered = [u for u in users if u not in offsets]
        if undelivered and not offsets:
            raise click.ClickException(f"tombstones to {topic!r} not delivered ({left} pending): "
                                       f"{'; '.join(errors[:3])}; the Redis keys were not touched")
        users = tuple(u for u in users if u in offsets)
        click.echo(f"tombstone(s) for {len(users)} user(s) written to {topic}")
        # Before the keys go: from here on Redis refuses, in every namespace, a push learnt
        # from the users' clicks before their tombstone (a resumed run's first pushes, a
        # dataflow behind the tombstone, a replay ending before it). A user's records share
        # one partition (keyed by user id), so their offsets compare with the pushes' seq.
        # The newest tombstone of a user wins: a later forget's offset is higher.
        # Also into the name-only hash while it is this topic's: the earlier release's
        # processes still running read only that one.
        # The durable copy first (Redis may lose the hash: restored from it at every start);
        # should it fail, the hash and the deletes still go ahead, and the next start writes
        # the copy from the hash.
        try:
            write_markers(s.kafka, topic, adoption.topic_id, offsets)
        except (KafkaException, RuntimeError, TimeoutError) as exc:  # TimeoutError: the
            unrecorded = exc  # markers topic created but not visible in time
        record_markers(client, topic, adoption.topic_id, offsets)
    for u, now in user_keys_everywhere(client, users).items():
        keys = sorted(set(before.get(u, [])) | set(now))
        mine = _delete_each(client, keys)
        names = sorted(namespace_of_key(k) for k in keys)
        by_flow = sorted(namespace_of_key(k) for k in keys if k not in mine)
        what = ", ".join(names) + (f"; already removed by a running dataflow: "
                                    f"{', '.join(by_flow)}" if by_flow else "")
        click.echo(f"{u}: deleted in {len(keys)} namespace(s)" + (f" ({what})" if names else ""))
    if undelivered:
        shown = ", ".join(map(repr, undelivered[:5])) + (
            f" and {len(undelivered) - 5} more" if len(undelivered) > 5 else "")
        raise click.ClickException(
            f"the tombstone(s) of {len(undelivered)} user(s) to {topic!r} not confirmed "
            f"({left} pending: {'; '.join(errors[:3]) or 'no answer in 30 s'}): {shown}; "
            "their Redis keys were not touched (the other users above are forgotten); run "
            "`diam forget` again for them (a second tombstone of a user is harmless)"
            + ("" if unrecorded is None else
               f"; also, the markers were not written to {s.kafka.forgotten_topic} "
               f"({unrecorded}): run `diam forget --restore-markers --topic {topic}` once "
               "Kafka answers"))
    if not redis_only and unrecorded is not None:
        raise click.ClickException(
            f"the markers were recorded in Redis but not on {s.kafka.forgotten_topic} "
            f"({unrecorded}): should Redis lose its data before the next diam run, replay or "
            "forget writes them there (at its start), they would be lost; run `diam forget "
            f"--restore-markers --topic {topic}` once Kafka answers")


def _delete_each(client: Any, keys: list[bytes]) -> set[bytes]:
    """Delete ``keys`` in one round trip; the ones this call deleted (a key gone already, e.g.
    deleted by a running dataflow that read the tombstone, is not among them)."""
    if not keys:
        return set()
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.delete(k)
    return {k for k, n in zip(keys, pipe.execute(), strict=True) if n}


COMMANDS = [forget_cmd]
