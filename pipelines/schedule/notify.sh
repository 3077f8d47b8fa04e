#!/bin/sh
# bake run --notify: called only when something was published, rejected or failed, with the JSON
# run summary on stdin and BAKE_EXIT_CODE set. Posts one line to a chat webhook.
set -eu
summary=$(cat)
if [ "${BAKE_EXIT_CODE:-0}" = 0 ]; then status=published; else status="failed (exit $BAKE_EXIT_CODE)"; fi
text="bake: $status — $(printf '%s' "$summary" | tr -d '\n' | cut -c1-1500)"
payload=$(printf '%s' "$text" | python3 -c 'import json,sys; print(json.dumps({"text": sys.stdin.read()}))')
curl -fsS -X POST -H 'Content-Type: application/json' --data-binary "$payload" "$CHAT_WEBHOOK"
