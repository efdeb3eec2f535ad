#!/usr/bin/env bash
# Runs the whole test suite: installs redis-server if it is missing (the tests start their own on free
# ports; REDIS_URL moves only the shared one elsewhere, so the binary is needed either way), builds,
# runs every test, prints "N passed, N failed" from the test results file.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v redis-server >/dev/null 2>&1 && ! command -v apt-get >/dev/null 2>&1; then
  # The tests that need it then fail, and the totals below say so.
  echo "redis-server not found, and no apt-get to install it with: install Redis so that redis-server is on PATH" >&2
elif ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing it from the OS packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

results="$(pwd)/TestResults"
rm -rf "$results"
status=0
dotnet test PortAzure.Aspire.sln --logger "trx;LogFileName=results.trx" --logger "console;verbosity=normal" \
  --results-directory "$results" "$@" || status=$?

# The totals come from the test results files, not from the console. A run that wrote none, or ran no
# test at all (a project dropped from the solution, a runner that found nothing), fails.
mapfile -t trxs < <(find "$results" -name '*.trx')
if [ "${#trxs[@]}" -eq 0 ]; then
  echo "no test results were written" >&2
  echo "0 passed, 0 failed"
  [ "$status" -ne 0 ] || status=1
  exit "$status"
fi
counter() { # the sum of one <Counters> attribute over every results file
  local sum=0 file value
  for file in "${trxs[@]}"; do
    value=$(grep -o '<Counters [^>]*>' "$file" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]\+' || true)
    sum=$((sum + ${value:-0}))
  done
  echo "$sum"
}
# Failed tests again, just above the totals: the console scrolls them out of a CI log's tail.
for trx in "${trxs[@]}"; do
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
done
passed=$(counter passed)
# A test that errored, timed out or was aborted did not pass either.
failed=$(( $(counter failed) + $(counter error) + $(counter timeout) + $(counter aborted) ))
# A test host that crashed (a stack overflow, FailFast, an out-of-memory kill) leaves a results file that counts only what
# finished before it: say so above the totals, which then cannot be read as "all passed".
if grep -q "The active test run was aborted" "${trxs[@]}" || { [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; }; then
  echo "the test run did not complete (the test host crashed or the run was aborted, see above); the totals below count only the tests that reported" >&2
  [ "$status" -ne 0 ] || status=1
fi
if [ "$((passed + failed))" -eq 0 ]; then
  echo "no test reported a result" >&2
  [ "$status" -ne 0 ] || status=1
fi
if [ "$failed" -ne 0 ] && [ "$status" -eq 0 ]; then
  status=1
fi
echo "$passed passed, $failed failed"
exit "$status"
