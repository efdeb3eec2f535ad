using System.Threading.RateLimiting;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// A cap on verified runs waiting for Redis at once (<c>Ingress:MaxConcurrentCalls</c>). The rate limits
/// bound arrivals, not work in progress: when Redis slows down, calls would pile up, each holding its
/// connection, body and buffers (319 MB in an overloaded benchmark phase, docs/benchmarks.md). Past the cap
/// a run is answered 503 with Retry-After at once, and nothing is accepted.
/// </summary>
/// <remarks>
/// Taken after the body is read and the signature checked, not before: a permit held from the start would
/// let unauthenticated clients hold all of them with slow uploads (Kestrel's minimum data rate and body size
/// bound those per connection, and a body being read holds only the bytes that have arrived: RequestBody).
/// </remarks>
internal sealed class WebhookConcurrencyLimit : IDisposable
{
    private readonly RateLimiter _limiter;

    public WebhookConcurrencyLimit(IOptions<IngressOptions> options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var cap = options.Value.MaxConcurrentCalls;
        // No queue: a waiting call would hold what the cap is there to bound. No cap: the library's no-op limiter.
        _limiter = cap == 0
            ? RateLimitPartition.GetNoLimiter(string.Empty).Factory(string.Empty)
            : new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = cap, QueueLimit = 0 });
    }

    /// <summary>A permit to dispose when the run's Redis write is over; not acquired when the cap is reached.</summary>
    public RateLimitLease TryEnter() => _limiter.AttemptAcquire();

    /// <summary>Permits not taken now (the no-cap limiter reports none).</summary>
    public long AvailablePermits => _limiter.GetStatistics()?.CurrentAvailablePermits ?? 0;

    public void Dispose() => _limiter.Dispose();
}
