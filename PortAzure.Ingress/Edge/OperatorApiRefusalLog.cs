using PortAzure.Diagnostics;
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
    private readonly LogThrottle _throttle = new(timeProvider, TimeSpan.FromSeconds(10));

    public void Refused(AdminApiKey.Result result)
    {
        Log.RejectedAgain(logger, result);
        // One window for every result: a loop alternating a missing and a wrong key is still one flood.
        if (_throttle.Take(string.Empty) is var refused and > 0)
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
