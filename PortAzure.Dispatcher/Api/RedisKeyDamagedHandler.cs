using Microsoft.AspNetCore.Diagnostics;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Redis;

namespace PortAzure.Dispatcher.Api;

/// <summary>
/// A Redis key of another type than the relay writes there (damaged, or written by something else) met by an operator
/// call: a 500 that says so, where the default handler's bare <c>internal_error</c> read like a bug in the relay. Not a 503
/// with Retry-After: a retry fails the same way until the key is mended.
/// </summary>
internal sealed partial class RedisKeyDamagedHandler(ILogger<RedisKeyDamagedHandler> logger) : IExceptionHandler
{
    public async ValueTask<bool> TryHandleAsync(HttpContext httpContext, Exception exception, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(httpContext);
        if (!RedisFailures.IsWrongType(exception))
        {
            return false;
        }
        Log.KeyDamaged(logger, exception, httpContext.Request.Method, httpContext.Request.Path.Value ?? "");
        await Problems.Create(StatusCodes.Status500InternalServerError, "redis_key_damaged",
            "A key this call reads in Redis holds another type than the relay writes there (damaged, or written by something else). " +
            "The Dispatcher's log has Redis's error (event 2305); GET /api/stats lists the shared keys that are damaged.").ExecuteAsync(httpContext);
        return true;
    }

    private static partial class Log
    {
        [LoggerMessage(EventIds.OperatorApiKeyDamaged, LogLevel.Error, "Operator call {Method} {Path} failed: a Redis key holds another type (damaged)")]
        public static partial void KeyDamaged(ILogger logger, Exception exception, string method, string path);
    }
}
