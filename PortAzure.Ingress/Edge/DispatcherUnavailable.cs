using Yarp.ReverseProxy.Forwarder;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// An operator call YARP could not forward, or whose answer it did not get, answers with a reason instead of the
/// framework's 502 or 504 with reason <c>internal_error</c>, which reads like a bug in the relay:
/// 503 <c>dispatcher_unavailable</c> with Retry-After, or, for a batch replay the Dispatcher may have run,
/// 502 <c>dispatcher_answer_lost</c> without it (a retry would replay up to its limit more).
/// </summary>
internal static class DispatcherUnavailable
{
    private const string BatchReplayPath = "/api/deadletters/replay";
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(5);

    public static IApplicationBuilder UseDispatcherUnavailableProblem(this IApplicationBuilder proxy) =>
        proxy.Use(async (context, next) =>
        {
            await next(context);
            // Only the Dispatcher's side (not a client that went away or sent a broken body), and only when nothing of
            // an answer was sent: a failure mid-body cannot be turned into another status.
            if (context.GetForwarderErrorFeature() is not { } error || context.Response.HasStarted
                || error.Error is not (ForwarderError.Request or ForwarderError.RequestTimedOut or ForwarderError.NoAvailableDestinations
                    or ForwarderError.RequestBodyDestination))
            {
                return;
            }
            context.Response.Clear();
            var problem = NeverSent(error) ? Problems.Create(StatusCodes.Status503ServiceUnavailable, "dispatcher_unavailable",
                    $"The Dispatcher could not be reached ({error.Error}); nothing was done. Retry after the number of seconds in Retry-After.", RetryAfter)
                : IsBatchReplay(context.Request) ? Problems.Create(StatusCodes.Status502BadGateway, "dispatcher_answer_lost",
                    $"The Dispatcher took the batch replay but its answer was lost ({error.Error}): some dead letters may have been replayed. " +
                    "Check GET /api/deadletters before replaying again.")
                : Problems.Create(StatusCodes.Status503ServiceUnavailable, "dispatcher_unavailable",
                    $"The Dispatcher did not answer ({error.Error}). Retry after the number of seconds in Retry-After: a replay or " +
                    "discard that reached it anyway answers 409 not_a_deadletter with the delivery's state.", RetryAfter);
            await problem.ExecuteAsync(context);
        });

    // No connection was made, so the Dispatcher saw nothing of the call.
    private static bool NeverSent(IForwarderErrorFeature error) =>
        error.Error == ForwarderError.NoAvailableDestinations
        || error.Exception is HttpRequestException
        {
            HttpRequestError: HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError or HttpRequestError.SecureConnectionError,
        };

    private static bool IsBatchReplay(HttpRequest request) =>
        // The Dispatcher's routing also takes the path with a trailing slash.
        HttpMethods.IsPost(request.Method) && string.Equals(request.Path.Value?.TrimEnd('/'), BatchReplayPath, StringComparison.OrdinalIgnoreCase);
}
