using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>
/// Connects to Redis while the host starts. The client integration connects lazily, synchronously, inside
/// the DI factory: left to the first requests, a burst of them blocked thread-pool threads on that factory
/// while the connection's own continuations waited for a thread, and the first answers took 15 s.
/// </summary>
internal sealed partial class RedisConnectionWarmup(IServiceProvider services, ILogger<RedisConnectionWarmup> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var multiplexer = await Task.Run(services.GetRequiredService<IConnectionMultiplexer>, cancellationToken);
        if (!multiplexer.IsConnected)
        {
            // Not fatal: the multiplexer keeps reconnecting, /health reports it and requests answer 503.
            Log.NotConnected(logger);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(3001, LogLevel.Warning, "Redis is not reachable at start-up; the connection keeps retrying in the background")]
        public static partial void NotConnected(ILogger logger);
    }
}
