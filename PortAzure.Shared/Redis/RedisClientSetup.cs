using Aspire.StackExchange.Redis;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>The services' one way to register the Redis connection (Aspire's client integration).</summary>
public static class RedisClientSetup
{
    /// <summary>Aspire's own switches for Redis command spans; either one, when set, wins over our default.</summary>
    public static readonly string[] TracingSwitches =
    [
        "Aspire:StackExchange:Redis:DisableTracing",
        $"Aspire:StackExchange:Redis:{ResourceNames.Redis}:DisableTracing",
    ];

    /// <summary>
    /// Registers <c>IConnectionMultiplexer</c> for the <c>redis</c> connection, with health check, logging and
    /// metrics, and connects it while the host starts rather than on the first request.
    /// </summary>
    public static IHostApplicationBuilder AddPortAzureRedisClient(this IHostApplicationBuilder builder, Action<StackExchangeRedisSettings>? configureSettings = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var tracingConfigured = IsTracingConfigured(builder.Configuration);
        builder.AddRedisClient(ResourceNames.Redis, settings =>
        {
            // Redis command spans are off unless configured: the instrumentation keeps every command's
            // profiling session until its next flush (10 s), which under load held 400+ MB and a quarter of
            // the Ingress's CPU (docs/benchmarks.md). Our own producer and consumer spans already carry the
            // trace from Port's call through the stream to the Azure POST.
            if (!tracingConfigured)
            {
                settings.DisableTracing = true;
            }
            configureSettings?.Invoke(settings);
        }, options =>
        {
            // The default socket manager completes replies on its own pool of 10 threads, one more hand-off
            // per command; on two cores the extra wake-ups cost more than they save (57 vs 85 us of Ingress
            // CPU per run, docs/benchmarks.md). Nothing here blocks a thread on Redis, which is the starvation
            // that dedicated pool guards against; start-up connects before requests arrive.
            options.SocketManager = SocketManager.ThreadPool;
        });
        builder.Services.AddHostedService<RedisConnectionWarmup>();
        return builder;
    }

    /// <summary>True when configuration sets one of Aspire's <see cref="TracingSwitches"/>.</summary>
    public static bool IsTracingConfigured(IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return TracingSwitches.Any(key => configuration[key] is not null);
    }
}
