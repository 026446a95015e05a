#!/usr/bin/env bash
# The main job end to end on the local stack (called by `make demo` after `diam stack up`):
# ml-100k prepared -> DIAM trained briefly -> snapshot published -> events produced (plus a few
# malformed ones) -> the online dataflow consumes them -> per-user state read back from Redis
# -> a recommendation served from it -> one retrain from the topic behind the promotion gate
# (published or refused, in the summary). Each run uses a fresh topic and namespace, so it never
# mixes with earlier runs; it first removes what earlier demo runs left (their topics, Redis
# namespaces and checkpoints), so repeated runs do not pile up: DEMO_KEEP=1 keeps them.
set -euo pipefail
PREFIX="demo-"
RUN="${PREFIX}$(date +%Y%m%d-%H%M%S)"
TOPIC="diam.clicks.${RUN}"
NS="${RUN}"
DATA="${DIAM_DATA_DIR:-data}/ml-100k"
CKPT="checkpoints/${RUN}"
EPOCHS="${DEMO_EPOCHS:-2}"
ITEMS="diam.items.${RUN}"
RETRAIN_JSON="$(mktemp)"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "stack"
diam stack status

if [ "${DEMO_KEEP:-0}" != "1" ]; then
  step "earlier demo runs: removed (DEMO_KEEP=1 keeps them)"
  python - "${PREFIX}" "diam.clicks.${PREFIX}" "diam.items.${PREFIX}" <<'PY'
import shutil
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient

from diam.settings import load_settings
from serving_cache import redis_client
from serving_cache.namespaces import drop_namespace, namespaces_named
from streams.kafka_io import delete_topics

prefix, topic_prefixes = sys.argv[1], tuple(sys.argv[2:])
s = load_settings()
rc = redis_client(s.redis)
spaces = [ns for ns in namespaces_named(rc, prefix) if ns != s.redis.namespace]
keys = sum(drop_namespace(rc, ns) for ns in spaces)
topics = delete_topics(s.kafka, sorted(
    t for t in AdminClient(s.kafka.client_config()).list_topics(timeout=30).topics
    if t.startswith(topic_prefixes)))
ckpts = sorted(Path("checkpoints").glob(f"{prefix}*"))
for d in ckpts:
    shutil.rmtree(d)
print(f"{len(spaces)} namespaces ({keys:,} keys), {len(topics)} topics, {len(ckpts)} checkpoints")
PY
fi

step "dataset: MovieLens-100K"
[ -f "${DATA}/events.tsv" ] || diam data prepare ml-100k --out "${DATA}"

# the retrain below holds out the newest retrain.holdout_fraction of the topic's events and
# compares its candidate with this model on them: this model leaves the same events out, or the
# gate would compare a candidate with a model that trained on the very events it is judged on
HOLDOUT="$(python -c 'from diam.settings import load_settings; print(load_settings().retrain.holdout_fraction)')"
step "base model: DIAM, ${EPOCHS} epochs on the CPU, the newest ${HOLDOUT} of the events left out (the full runs live in bench/)"
diam train --model diam --data "${DATA}" --out "${CKPT}" --epochs "${EPOCHS}" --leave-newest "${HOLDOUT}"

step "snapshot: verify, build the FAISS index, publish"
diam snapshot publish "${CKPT}"

step "produce ml-100k to ${TOPIC}, its catalogue to ${ITEMS} (and three malformed events)"
diam produce --data "${DATA}" --topic "${TOPIC}" --catalog --items-topic "${ITEMS}"
python - "${TOPIC}" <<'PY'
import sys
from diam.settings import load_settings
from streams.producer import produce_raw
report = produce_raw(load_settings().kafka, sys.argv[1], [
    (b"u1", b"\xc1 not msgpack"),
    (b"u1", b'{"user_id": "u:1", "item_id": 1, "ts": 880000000000}'),
    (b"u1", b'{"user_id": "u1", "item_id": 1}'),
])
print(f"malformed events sent: {report.sent}")
PY

step "online dataflow (bounded: stops at the end of the topic)"
time diam run --topic "${TOPIC}" --namespace "${NS}" --bounded

step "per-user state in Redis namespace ${NS}"
diam inspect namespace --namespace "${NS}"
diam inspect user 1 --namespace "${NS}"

step "dead letters (the reason travels in the record headers)"
diam deadletters --source-topic "${TOPIC}"

step "recommendations for user 1 from the fresh vectors"
diam recommend 1 --namespace "${NS}" -n 10

step "retrain once from the topic (warm start, held-out newest 10%, promotion gate)"
DIAM_KAFKA_ITEMS_TOPIC="${ITEMS}" diam retrain --once --topic "${TOPIC}" \
  --epochs "${DEMO_RETRAIN_EPOCHS:-1}" --json > "${RETRAIN_JSON}"
RETRAIN="$(python - "${RETRAIN_JSON}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
c, a = d["metrics"].get("candidate") or {}, d["metrics"].get("active") or {}
fmt = lambda m, k: "n/a" if m.get(k) is None else f"{m[k]:.4f}"
print(f"{'published ' + d['version'] if d['published'] else 'refused'} ({d['reason']}); "
      f"recall@20 {fmt(c, 'recall@20')} vs active {fmt(a, 'recall@20')}, "
      f"entropy@20 {fmt(c, 'entropy@20')} vs {fmt(a, 'entropy@20')}, "
      f"{d['metrics'].get('eval_users')} held-out users, {d['seconds']['total']:.0f} s; "
      f"candidate kept in {d['candidate_path']}")
PY
)"
echo "${RETRAIN}"
rm -f "${RETRAIN_JSON}"
echo
echo "demo done: topic ${TOPIC}, namespace ${NS}, checkpoint ${CKPT}"
echo "retrain: ${RETRAIN}"
