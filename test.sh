#!/usr/bin/env bash
# Runs the whole test suite: installs redis-server if it is missing (the tests start their own on a
# free port unless REDIS_URL points at one), builds, runs every test, prints "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v redis-server >/dev/null 2>&1 && [ -z "${REDIS_URL:-}" ]; then
  echo "redis-server not found: installing it from the OS packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi

results="$(pwd)/TestResults"
rm -rf "$results"
status=0
dotnet test PortAzure.Aspire.sln --logger "trx;LogFileName=results.trx" --logger "console;verbosity=normal" \
  --results-directory "$results" "$@" || status=$?

# The totals come from the test results file, not from the console.
trx=$(find "$results" -name '*.trx' | head -n 1)
if [ -z "$trx" ]; then
  echo "no test results were written" >&2
  echo "0 passed, 0 failed"
  exit "${status:-1}"
fi
# Failed tests again, just above the totals: the console scrolls them out of a CI log's tail.
if grep -q 'outcome="Failed"' "$trx" && command -v python3 >/dev/null 2>&1; then
  python3 - "$trx" <<'PY' || true
import sys
import xml.etree.ElementTree as ET

ns = {"t": "http://microsoft.com/schemas/VisualStudio/TeamTest/2010"}
for result in ET.parse(sys.argv[1]).getroot().iterfind(".//t:UnitTestResult", ns):
    if result.get("outcome") != "Failed":
        continue
    message = result.findtext(".//t:ErrorInfo/t:Message", default="", namespaces=ns).strip()
    stack = result.findtext(".//t:ErrorInfo/t:StackTrace", default="", namespaces=ns).strip()
    print(f"FAILED {result.get('testName')} ({result.get('duration')})")
    print("  " + message[:4000].replace("\n", "\n  "))
    print("  " + "\n  ".join(stack.splitlines()[:12]))
PY
fi
counters=$(grep -o '<Counters [^>]*>' "$trx")
passed=$(echo "$counters" | sed -E 's/.* passed="([0-9]+)".*/\1/')
failed=$(echo "$counters" | sed -E 's/.* failed="([0-9]+)".*/\1/')
echo "$passed passed, $failed failed"
exit "$status"
