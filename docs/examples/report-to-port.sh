#!/usr/bin/env bash
# Reports a pipeline's outcome to a Port action run: one log line, then the run's final status.
# The same logic as the "Report to Port" step of azure-pipeline.yml, for pipelines that keep it in
# their repository (`- bash: ./report-to-port.sh` with the same env) or to try it by hand.
#
# Environment:
#   PORT_RUN_ID          the run id (the body's port_context.runId)
#   PORT_CLIENT_ID       Port organisation credentials
#   PORT_CLIENT_SECRET
#   JOB_STATUS           Succeeded | SucceededWithIssues | Failed | Canceled ($(Agent.JobStatus))
#   BUILD_URL            optional: link shown on the run in Port
#   PORT_API_URL         optional: https://api.port.io (EU, default) or https://api.us.port.io
# Needs curl and jq. Secrets are passed to curl on stdin, never on a command line.
set -euo pipefail

: "${PORT_RUN_ID:?PORT_RUN_ID is required}"
: "${PORT_CLIENT_ID:?PORT_CLIENT_ID is required}"
: "${PORT_CLIENT_SECRET:?PORT_CLIENT_SECRET is required}"
: "${JOB_STATUS:?JOB_STATUS is required}"
api="${PORT_API_URL:-https://api.port.io}"
build_url="${BUILD_URL:-}"

case "$JOB_STATUS" in
  Succeeded|SucceededWithIssues) status=SUCCESS ;;
  *) status=FAILURE ;;
esac

token=$(jq -n '{clientId: env.PORT_CLIENT_ID, clientSecret: env.PORT_CLIENT_SECRET}' |
  curl -fsS --retry 3 -X POST "$api/v1/auth/access_token" \
    -H 'Content-Type: application/json' --data-binary @- | jq -r .accessToken)
if [ -z "$token" ] || [ "$token" = null ]; then
  echo "Port returned no access token" >&2
  exit 1
fi

# The log line first: a run with a final status may no longer take log lines.
jq -n --arg m "Pipeline run ${build_url:-(no link)} finished: $JOB_STATUS" '{message: $m}' |
  curl -fsS --retry 3 -X POST "$api/v1/actions/runs/$PORT_RUN_ID/logs" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' --data-binary @- >/dev/null

jq -n --arg s "$status" --arg l "$build_url" --arg lbl "Azure Pipelines: $JOB_STATUS" \
  '{status: $s, statusLabel: $lbl} + (if $l == "" then {} else {link: $l} end)' |
  curl -fsS --retry 3 -X PATCH "$api/v1/actions/runs/$PORT_RUN_ID" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' --data-binary @- >/dev/null

echo "Reported $status for Port run $PORT_RUN_ID"
