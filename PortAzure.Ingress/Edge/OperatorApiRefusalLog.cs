using PortAzure.Ingress.Diagnostics;
using PortAzure.Security;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Logs the operator calls refused at the edge: each at Debug, and a Warning for the first at once, then at most one
/// per interval with how many were refused since the last one. The operator API has no rate limit, and one Warning per
/// refusal would let anyone sending bad keys in a loop make the log (and its export) the flood.
/// </summary>
internal sealed partial class OperatorApiRefusalLog(TimeProvider timeProvider, ILogger<OperatorApiRefusalLog> logger)
{
    private static readonly TimeSpan Interval = TimeSpan.FromSeconds(10);
    private readonly Lock _gate = new();
    private DateTimeOffset _nextWarningAt = DateTimeOffset.MinValue;
    private long _refusedSinceWarning;

    public void Refused(AdminApiKey.Result result)
    {
        long refused;
        lock (_gate)
        {
            _refusedSinceWarning++;
            var now = timeProvider.GetUtcNow();
            if (now < _nextWarningAt)
            {
                refused = 0;
            }
            else
            {
                refused = _refusedSinceWarning;
                _refusedSinceWarning = 0;
                _nextWarningAt = now + Interval;
            }
        }
        Log.RejectedAgain(logger, result);
        if (refused > 0)
        {
            Log.Rejected(logger, refused, result);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventIds.OperatorApiRejected, LogLevel.Warning,
            "Operator API calls refused at the edge: {Refused} since the last such line (at most one every 10 s), the latest {Result}")]
        public static partial void Rejected(ILogger logger, long refused, AdminApiKey.Result result);

        [LoggerMessage(EventIds.OperatorApiRejectedAgain, LogLevel.Debug, "Operator API call refused at the edge: {Result}")]
        public static partial void RejectedAgain(ILogger logger, AdminApiKey.Result result);
    }
}
