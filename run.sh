#!/usr/bin/env bash
# Runs the whole system: Redis, the Ingress, the Dispatcher and the Azure DevOps emulator under the
# Aspire AppHost, with its dashboard at http://localhost:15080 (the login URL is printed below).
# Redis comes from a container when Docker/Podman answers, else from redis-server, which this script
# installs from the OS packages when neither is there. Extra arguments go to the AppHost.
set -euo pipefail
cd "$(dirname "$0")"

runtime="${ASPIRE_CONTAINER_RUNTIME:-${DOTNET_ASPIRE_CONTAINER_RUNTIME:-docker}}"
have_container_runtime() { command -v "$runtime" >/dev/null 2>&1 && timeout 5 "$runtime" info >/dev/null 2>&1; }

# Only where apt-get is (Debian, Ubuntu): elsewhere the AppHost's own message names the three ways to give it a Redis.
if [ -z "${ConnectionStrings__redis:-}" ] && ! have_container_runtime && ! command -v redis-server >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1; then
  echo "No container runtime and no redis-server: installing redis-server from the OS packages" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

exec dotnet run --project PortAzure.AppHost --launch-profile http -- "$@"
