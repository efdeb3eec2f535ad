using System.Threading.RateLimiting;
using Microsoft.Extensions.Options;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// The shared token bucket of the webhook route (<c>Ingress:RateLimit:GlobalPermitsPerSecond</c> and <c>GlobalBurst</c>),
/// protecting the queue from all clients together.
/// </summary>
/// <remarks>
/// Taken after the signature is checked, as the concurrency permit is, not in the rate-limiting middleware with the
/// per-client bucket: there, calls nobody signed spent it, and a flood from a few dozen addresses (each within its own
/// bucket) kept Port's signed calls at 429 for as long as it lasted.
/// </remarks>
internal sealed class WebhookGlobalLimit : IDisposable
{
    private readonly RateLimiter _limiter;

    public WebhookGlobalLimit(IOptions<RateLimitOptions> options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var configured = options.Value;
        _limiter = configured.Enabled
            ? new TokenBucketRateLimiter(WebhookRateLimiting.Bucket(configured.GlobalPermitsPerSecond, configured.GlobalBurst))
            : RateLimitPartition.GetNoLimiter(string.Empty).Factory(string.Empty);
    }

    /// <summary>A token for one signed call; not acquired when the bucket is empty (its lease tells when to retry).</summary>
    public RateLimitLease TryTake() => _limiter.AttemptAcquire();

    public void Dispose() => _limiter.Dispose();
}
