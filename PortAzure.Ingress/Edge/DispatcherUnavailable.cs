using Yarp.ReverseProxy.Forwarder;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// An operator call YARP could not forward (the Dispatcher stopped, restarting, or too slow) answers 503 with a reason
/// and Retry-After. Left to the framework it was a 502 or 504 with reason <c>internal_error</c>, which reads like a
/// bug in the relay.
/// </summary>
internal static class DispatcherUnavailable
{
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(5);

    public static IApplicationBuilder UseDispatcherUnavailableProblem(this IApplicationBuilder proxy) =>
        proxy.Use(async (context, next) =>
        {
            await next(context);
            // Only when nothing of an answer was sent: a failure mid-body cannot be turned into another status.
            if (context.GetForwarderErrorFeature() is { } error && !context.Response.HasStarted)
            {
                context.Response.Clear();
                await Problems.Create(StatusCodes.Status503ServiceUnavailable, "dispatcher_unavailable",
                    $"The Dispatcher did not answer ({error.Error}). Retry after the number of seconds in Retry-After: a replay or " +
                    "discard that reached it anyway answers 409 not_a_deadletter with the delivery's state.",
                    RetryAfter).ExecuteAsync(context);
            }
        });
}
