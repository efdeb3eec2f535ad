using Microsoft.Extensions.Diagnostics.HealthChecks;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>
/// Degraded while Redis is over <c>maxmemory</c>: the Ingress then refuses every run (503) and no delivery starts, yet
/// Redis answers, so its own check stays Healthy, and the Dispatcher's backlog check may too (nothing new is queued).
/// Degraded, not Unhealthy: the probes that read <c>/health</c> keep the services in rotation, and Port keeps getting
/// the relay's own 503 with <c>Retry-After</c> rather than the load balancer's.
/// </summary>
internal sealed class RedisMemoryHealthCheck(IConnectionMultiplexer redis) : IHealthCheck
{
    public const string Name = "redis-memory";

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        await RedisMemory.IsFullAsync(redis, cancellationToken) switch
        {
            true => HealthCheckResult.Degraded("Redis is over maxmemory and refuses writes: no run is accepted and no delivery starts until memory is freed or added."),
            false => HealthCheckResult.Healthy(),
            // Redis away: the Redis client's own check says so. INFO refused or maxmemory hidden: not a fault of the
            // relay's, and no reason to pull it from rotation, but the check is blind and says so.
            null => HealthCheckResult.Healthy("Redis's memory could not be read (Redis away or failing over, INFO not allowed or not sent, or maxmemory not reported): a full Redis would not show here."),
        };
}
