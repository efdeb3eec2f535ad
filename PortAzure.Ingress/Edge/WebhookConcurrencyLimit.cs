using System.Threading.RateLimiting;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// A cap on webhook calls in flight (<c>Ingress:MaxConcurrentCalls</c>), after the rate limits. The rate
/// limits bound arrivals, not work: when Redis or the host slows down, calls would queue, each holding its
/// connection, body and buffers (319 MB in an overloaded benchmark phase, docs/benchmarks.md). Past the cap a
/// call is answered 503 with Retry-After at once, and nothing is accepted.
/// </summary>
internal sealed partial class WebhookConcurrencyLimit : IDisposable
{
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(1);
    private readonly ConcurrencyLimiter? _limiter;
    private readonly IngressMetrics _metrics;
    private readonly ILogger<WebhookConcurrencyLimit> _logger;

    public WebhookConcurrencyLimit(IOptions<IngressOptions> options, IngressMetrics metrics, ILogger<WebhookConcurrencyLimit> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _metrics = metrics;
        _logger = logger;
        var cap = options.Value.MaxConcurrentCalls;
        // No queue: a waiting call would hold what the cap is there to bound.
        _limiter = cap == 0 ? null : new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = cap, QueueLimit = 0 });
    }

    public async ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(next);
        if (_limiter is null)
        {
            return await next(context);
        }
        using var lease = _limiter.AttemptAcquire();
        if (!lease.IsAcquired)
        {
            _metrics.Rejected(RejectionReasons.Overloaded);
            Log.Overloaded(_logger);
            return Problems.Create(StatusCodes.Status503ServiceUnavailable, RejectionReasons.Overloaded,
                "Too many webhook calls are in progress; nothing was accepted. Retry after the number of seconds in Retry-After.", RetryAfter);
        }
        return await next(context);
    }

    public void Dispose() => _limiter?.Dispose();

    private static partial class Log
    {
        // Debug, as for the rate limits: under overload one line per refused call would add to it.
        [LoggerMessage(EventIds.Overloaded, LogLevel.Debug, "Refused a webhook call: Ingress:MaxConcurrentCalls calls already in progress")]
        public static partial void Overloaded(ILogger logger);
    }
}
