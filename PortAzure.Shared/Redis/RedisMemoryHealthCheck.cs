using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;
using PortAzure.Diagnostics;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>
/// Degraded while Redis is over <c>maxmemory</c>: the Ingress then refuses every run (503) and no delivery starts, yet
/// Redis answers, so its own check stays Healthy, and the Dispatcher's backlog check may too (nothing new is queued).
/// Degraded, not Unhealthy: the probes that read <c>/health</c> keep the services in rotation, and Port keeps getting
/// the relay's own 503 with <c>Retry-After</c> rather than the load balancer's.
/// </summary>
internal sealed partial class RedisMemoryHealthCheck(IConnectionMultiplexer redis, ILogger<RedisMemoryHealthCheck> logger) : IHealthCheck
{
    public const string Name = "redis-memory";

    // Registered as a singleton: the warning is written once per process, at the first probe that finds the check blind.
    private int _blindWarned;

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var (full, blind) = await RedisMemory.ReadAsync(redis, cancellationToken);
        if (full is true)
        {
            return HealthCheckResult.Degraded("Redis is over maxmemory and refuses writes: no run is accepted and no delivery starts until memory is freed or added.");
        }
        if (blind is not null && Interlocked.Exchange(ref _blindWarned, 1) == 0)
        {
            // Healthy all the same: not a fault of the relay's, and no reason to pull it from rotation; but nobody reads a
            // Healthy check's description, so the setting to change is said where it is seen.
            Log.MemoryUnreadable(logger, blind);
        }
        // Redis away: the Redis client's own check says so.
        return full is false ? HealthCheckResult.Healthy() : HealthCheckResult.Healthy("Redis's memory could not be read: " + (blind ?? "Redis was away or busy") + ".");
    }

    private static partial class Log
    {
        [LoggerMessage(SharedEventIds.RedisMemoryUnreadable, LogLevel.Warning,
            "The redis-memory health check cannot read Redis's memory: {Reason}. A full Redis will not show on /health; watch its memory another way")]
        public static partial void MemoryUnreadable(ILogger logger, string reason);
    }
}
