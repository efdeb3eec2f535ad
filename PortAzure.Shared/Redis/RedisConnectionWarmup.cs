using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PortAzure.Diagnostics;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>
/// Connects to Redis while the host starts, before Kestrel listens. The client integration connects lazily,
/// synchronously, inside the DI factory: left to the first requests, a burst of them blocked thread-pool
/// threads on that factory while the connection's own continuations waited for a thread, and the first
/// answers took 15 s.
/// </summary>
/// <remarks>
/// Start-up waits for the connect: at once when Redis refuses it, up to the connect timeout (5 s unless
/// <c>connectTimeout</c> says otherwise; one try, RedisClientSetup) when nothing answers. The service then starts anyway.
/// </remarks>
internal sealed partial class RedisConnectionWarmup(IServiceProvider services, ILogger<RedisConnectionWarmup> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        // Resolved here rather than injected, so that building the host does not connect; on a pool thread
        // because the connect blocks; WaitAsync so that a stop during start-up need not wait for it. (In the Dispatcher
        // it does: its background services take the connection in their constructors, and the host builds every hosted
        // service before it starts the first, so the connect runs there, on the starting thread, before this.)
        var multiplexer = await Task.Run(services.GetRequiredService<IConnectionMultiplexer>, cancellationToken).WaitAsync(cancellationToken);
        if (!multiplexer.IsConnected)
        {
            // Not fatal: the multiplexer keeps reconnecting, /health reports it and requests answer 503.
            Log.NotConnected(logger);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(SharedEventIds.RedisNotConnectedAtStart, LogLevel.Warning, "Redis is not reachable at start-up; the connection keeps retrying in the background")]
        public static partial void NotConnected(ILogger logger);
    }
}
