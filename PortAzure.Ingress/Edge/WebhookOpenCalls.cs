using System.Threading.RateLimiting;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Webhook calls one client address may have between the start of their body read and the end of their signature check
/// (<c>Ingress:RateLimit:ConcurrentCallsPerClient</c>): the bytes held before anyone knows who sent them.
/// </summary>
/// <remarks>
/// The per-client bucket caps how fast a client's calls start, not how many are open. A body sent fast up to its last
/// byte and then held stays within Kestrel's minimum data rate (an average since the body began) for minutes: a review
/// held 690 MB with 350 such calls from one address. Taken in the handler, not the rate-limiting middleware: there the
/// permit would be held through the Redis enqueue too, so that a slow Redis turned the cap into Port's own limit (Port
/// calls from a few addresses). (A call refused here has spent a token of the per-client bucket, taken before it, as it
/// did in the middleware.)
/// </remarks>
internal sealed class WebhookOpenCalls : IDisposable
{
    private readonly PartitionedRateLimiter<HttpContext> _limiter;
    private readonly IngressMetrics _metrics;

    public WebhookOpenCalls(IOptions<RateLimitOptions> options, IngressMetrics metrics)
    {
        ArgumentNullException.ThrowIfNull(options);
        var configured = options.Value;
        _metrics = metrics;
        _limiter = PartitionedRateLimiter.Create<HttpContext, string>(context => configured.Enabled
            ? RateLimitPartition.GetConcurrencyLimiter(WebhookRateLimiting.ClientKey(context),
                _ => new ConcurrencyLimiterOptions { PermitLimit = configured.ConcurrentCallsPerClient, QueueLimit = 0 })
            : RateLimitPartition.GetNoLimiter(string.Empty));
    }

    /// <summary>A permit for one call's body read and signature check, or one not acquired; dispose it once the check is done.</summary>
    public Permit TryEnter(HttpContext context) => new(_limiter.AttemptAcquire(context), _metrics);

    public void Dispose() => _limiter.Dispose();

    internal sealed class Permit : IDisposable
    {
        private RateLimitLease? _lease;
        private readonly IngressMetrics _metrics;

        public Permit(RateLimitLease lease, IngressMetrics metrics)
        {
            _metrics = metrics;
            IsAcquired = lease.IsAcquired;
            _lease = lease;
            if (IsAcquired)
            {
                metrics.Unverified(1);
            }
        }

        public bool IsAcquired { get; }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _lease, null) is { } lease)
            {
                lease.Dispose();
                if (IsAcquired)
                {
                    _metrics.Unverified(-1);
                }
            }
        }
    }
}
