#!/usr/bin/env bash
# Sends one signed Port run (the v1 sample body with a fresh run id) to the relay, as Port would.
# Usage: scripts/send-run.sh [relay-base-url] [org] [webhook]
#   PORT_CLIENT_SECRET  the Port client secret (default: the development default, port-demo-secret)
#   RUN_ID              the run id to put into context.runId (default: a new one)
# The secret is passed to openssl on its command line, which other users of this machine can see (ps): a tool for
# the development secret or a machine of your own, not for a production secret on a shared host.
set -euo pipefail
base="${1:-http://localhost:5100}"
org="${2:-contoso}"
webhook="${3:-deploy}"
secret="${PORT_CLIENT_SECRET:-port-demo-secret}"
run_id="${RUN_ID:-r_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

body=$(printf '{"action":"deploy_service","resourceType":"run","status":"TRIGGERED","trigger":{"by":{"orgId":"org_demo","userId":"user_demo"},"origin":"UI","at":"%s"},"context":{"entity":"checkout","blueprint":"service","runId":"%s"},"payload":{"entity":null,"action":{"identifier":"deploy_service","invocationMethod":{"type":"WEBHOOK"}},"properties":{"environment":"staging","version":"2.4.1"},"censoredProperties":[]}}' \
  "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" "$run_id")
timestamp=$(date +%s)
signature=$(printf '%s.%s' "$timestamp" "$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64)

echo "run id: $run_id" >&2
curl -sS -i -X POST "$base/$org/_apis/public/distributedtask/webhooks/$webhook?api-version=6.0-preview" \
  -H "Content-Type: application/json" \
  -H "X-Port-Timestamp: $timestamp" \
  -H "X-Port-Signature: v1,$signature" \
  --data-binary "$body"
echo
