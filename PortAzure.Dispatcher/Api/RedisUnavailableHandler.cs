using Microsoft.AspNetCore.Diagnostics;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Api;

/// <summary>
/// Redis unreachable, timing out or refusing for now (a failover's READONLY, LOADING after a restart) during an
/// operator call: a 503 with a reason and Retry-After, where the default handler would answer a bare 500 that reads
/// like a bug in the relay.
/// Every operator change is one script, so a retry repeats nothing that happened (a batch replay that had replayed
/// some before the error answers 200 with those instead).
/// </summary>
internal sealed partial class RedisUnavailableHandler(ILogger<RedisUnavailableHandler> logger) : IExceptionHandler
{
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(5);

    public async ValueTask<bool> TryHandleAsync(HttpContext httpContext, Exception exception, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(httpContext);
        if (!IsUnavailable(exception))
        {
            return false;
        }
        Log.RedisUnavailable(logger, exception, httpContext.Request.Method, httpContext.Request.Path.Value ?? "");
        await Problems.Create(StatusCodes.Status503ServiceUnavailable, "redis_unavailable",
            "Redis did not answer the request; retry after the number of seconds in Retry-After.", RetryAfter).ExecuteAsync(httpContext);
        return true;
    }

    private static bool IsUnavailable(Exception exception) => exception switch
    {
        RedisConnectionException => true,
        // A server error that only says "not now"; any other one (WRONGTYPE, a script error) is a fault to see as a 500,
        // not something a retry fixes.
        RedisServerException server => RedisFailures.IsTransientRefusal(server),
        RedisException => false,
        // Timeouts and what the client fails a call with when its connection dies: RedisFailures knows those.
        _ => RedisFailures.IsFailure(exception),
    };

    private static partial class Log
    {
        [LoggerMessage(EventIds.OperatorApiRedisUnavailable, LogLevel.Warning, "Operator call {Method} {Path} failed: Redis unavailable")]
        public static partial void RedisUnavailable(ILogger logger, Exception exception, string method, string path);
    }
}
