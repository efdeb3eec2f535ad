#!/usr/bin/env bash
# The load bench in one command: builds Release, then runs bench/PortAzure.LoadBench, which starts
# redis-server (its own port, --save ""), the Azure DevOps emulator, the Ingress, the Dispatcher(s) and
# two Kestrel baselines (bare, and storing each body with one XADD) as real processes, measures, and checks
# that no run is lost or duplicated.
#   ./bench/run.sh            full run (several minutes; results in bench/results/<stamp>/results.md)
#   ./bench/run.sh --smoke    tiny run (seconds of load), checks lost/duplicated runs only; exit 1 on a failure
# Options are passed through: ./bench/run.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
  echo "redis-server/redis-benchmark not found: installing redis-server from the OS packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

for project in PortAzure.Ingress/PortAzure.Ingress.csproj \
               PortAzure.Dispatcher/PortAzure.Dispatcher.csproj \
               PortAzure.AzureDevOpsEmulator/PortAzure.AzureDevOpsEmulator.csproj \
               bench/PortAzure.BareKestrel/PortAzure.BareKestrel.csproj \
               bench/PortAzure.LoadBench/PortAzure.LoadBench.csproj; do
  dotnet build -c Release --nologo -v quiet "$project" >/dev/null || { dotnet build -c Release --nologo "$project"; exit 1; }
done

exec dotnet bench/PortAzure.LoadBench/bin/Release/net10.0/PortAzure.LoadBench.dll "$@"
