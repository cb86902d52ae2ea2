#!/usr/bin/env bash
# A/B of the subscriptions benchmark in one run: for CODES 100 and 1000 and each backend,
# BEFORE then AFTER (release binaries), each `benches/subscriptions/run.sh BACKEND 20 32`;
# then AFTER with CHANNEL=websocket (matched and stored, never delivered).
#   BEFORE=path/to/fhirgate-old AFTER=path/to/fhirgate-new benches/subscriptions/ab.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${BEFORE:?the binary before the change}" "${AFTER:?the binary after it}"
F='^---|Requests/sec|notifications|no notif|99%|creating|Non-2xx|Socket errors'
for codes in 100 1000; do
  for backend in sqlite postgres; do
    for bin in "$BEFORE" "$AFTER"; do
      echo "=== $backend CODES=$codes $bin $(date -u +%H:%M:%S)"
      CODES=$codes FHIRGATE_BIN=$bin benches/subscriptions/run.sh "$backend" 20 32 2>&1 | grep -E "$F"
    done
  done
done
for backend in sqlite postgres; do
  echo "=== $backend CODES=100 CHANNEL=websocket $AFTER $(date -u +%H:%M:%S)"
  CHANNEL=websocket LATENCY_POSTS=1 STEADY_S=1 CODES=100 FHIRGATE_BIN=$AFTER \
    benches/subscriptions/run.sh "$backend" 20 32 2>&1 | grep -E "$F"
done
