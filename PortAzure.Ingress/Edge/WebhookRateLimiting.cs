using System.Net;
using System.Net.Sockets;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.RateLimiting;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Abuse limits on the webhook route: a token bucket per client address, taken here before anything else, and one
/// shared bucket for all clients, taken once the call's signature is checked (<see cref="WebhookGlobalLimit"/>).
/// Nothing else (operator API, health probes) passes through either bucket.
/// </summary>
/// <remarks>
/// Token buckets rather than fixed windows: Port fires a burst when many actions are triggered at
/// once (a bulk run over entities), and a bucket lets that burst through while still capping the
/// sustained rate; a fixed window would also allow twice the limit across a window boundary.
/// </remarks>
internal static partial class WebhookRateLimiting
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MinimumRetryAfter = TimeSpan.FromSeconds(1);

    public static IServiceCollection AddWebhookRateLimiting(this IServiceCollection services)
    {
        services.AddOptions<RateLimitOptions>().BindConfiguration(RateLimitOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<RateLimitOptions>, RateLimitOptionsValidator>();
        services.AddRateLimiter(_ => { });
        services.AddSingleton<WebhookGlobalLimit>();
        services.AddSingleton<WebhookOpenCalls>();
        services.AddOptions<RateLimiterOptions>().Configure<IOptions<RateLimitOptions>>((limiter, configured) =>
        {
            // Read while the proxy's routes are mapped (YARP's rate-limiter policies), before the start-up validation.
            if (configured.ValueOrNull() is not { } options)
            {
                return;
            }
            limiter.RejectionStatusCode = StatusCodes.Status429TooManyRequests;
            limiter.OnRejected = RejectAsync;
            if (!options.Enabled)
            {
                return;
            }
            // Only the per-client bucket here, before the body is read: the shared one is taken after the signature check
            // (WebhookGlobalLimit), so that neither a client refused by its own bucket nor calls nobody signed spend it.
            limiter.GlobalLimiter = PartitionedRateLimiter.Create<HttpContext, string>(context => IsWebhookEndpoint(context)
                ? RateLimitPartition.GetTokenBucketLimiter(ClientKey(context), _ => Bucket(options.PermitsPerSecondPerClient, options.Burst))
                : RateLimitPartition.GetNoLimiter(""));
        });
        return services;
    }

    /// <summary>Puts an endpoint under the webhook limits.</summary>
    public static TBuilder RequireWebhookRateLimits<TBuilder>(this TBuilder endpoint) where TBuilder : IEndpointConventionBuilder =>
        endpoint.WithMetadata(WebhookLimited.Instance);

    internal static TokenBucketRateLimiterOptions Bucket(int perSecond, int burst) => new()
    {
        TokenLimit = burst,
        TokensPerPeriod = perSecond,
        ReplenishmentPeriod = Period,
        // No queue: a waiting request holds a connection and its body; Port can come back later.
        QueueLimit = 0,
    };

    private static bool IsWebhookEndpoint(HttpContext context) => context.GetEndpoint()?.Metadata.GetMetadata<WebhookLimited>() is not null;

    /// <summary>
    /// The client's address as the host resolved it: the connection's, or, with forwarded headers on
    /// (<c>ASPNETCORE_FORWARDEDHEADERS_ENABLED=true</c>, as the published manifest sets), the last
    /// <c>X-Forwarded-For</c> entry, the one the proxy in front appended. This method never reads the
    /// header itself, or any client could pick its own bucket. IPv6 clients are grouped by /64: one host
    /// usually holds a whole /64.
    /// </summary>
    internal static string ClientKey(HttpContext context)
    {
        var address = context.Connection.RemoteIpAddress;
        if (address is null)
        {
            return "unknown";
        }
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }
        if (address.AddressFamily == AddressFamily.InterNetworkV6)
        {
            var bytes = address.GetAddressBytes();
            Array.Clear(bytes, 8, 8);
            address = new IPAddress(bytes);
        }
        return address.ToString();
    }

    private static async ValueTask RejectAsync(OnRejectedContext rejected, CancellationToken cancellationToken)
    {
        var context = rejected.HttpContext;
        var retryAfter = RetryAfter(rejected.Lease);
        context.RequestServices.GetRequiredService<IngressMetrics>().Rejected(RejectionReasons.RateLimited);
        Log.RateLimited(context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(WebhookRateLimiting)),
            ClientKey(context), retryAfter.TotalSeconds);
        await Problems.Create(StatusCodes.Status429TooManyRequests, RejectionReasons.RateLimited,
            "Too many webhook calls; retry after the number of seconds in Retry-After.", retryAfter).ExecuteAsync(context);
    }

    /// <summary>When a refused lease says to come back, at least a second from now.</summary>
    internal static TimeSpan RetryAfter(RateLimitLease lease) =>
        lease.TryGetMetadata(MetadataName.RetryAfter, out var delay) && delay > MinimumRetryAfter ? delay : MinimumRetryAfter;

    private sealed class WebhookLimited
    {
        public static readonly WebhookLimited Instance = new();
    }

    private static partial class Log
    {
        // Debug: under a flood one line per refused call would be the flood; the requests metric counts them.
        [LoggerMessage(EventIds.RateLimited, LogLevel.Debug, "Refused a webhook call from {Client}: rate limit reached, retry after {RetryAfterSeconds} s")]
        public static partial void RateLimited(ILogger logger, string client, double retryAfterSeconds);
    }
}
