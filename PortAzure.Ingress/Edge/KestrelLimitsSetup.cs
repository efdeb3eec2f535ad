using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Kestrel's connection-level limits with the Ingress's defaults; every key under Kestrel's own
/// <c>Kestrel:Limits</c> section (e.g. <c>Kestrel:Limits:MaxRequestHeadersTotalSize</c>) overrides them.
/// </summary>
internal sealed class KestrelLimitsSetup(IConfiguration configuration, IOptions<IngressOptions> ingressOptions) : IConfigureOptions<KestrelServerOptions>
{
    public const string SectionName = "Kestrel:Limits";

    /// <summary>
    /// Room above <c>Ingress:MaxBodyBytes</c>: a moderately large body reaches the handler, which answers
    /// its own 413 problem, while anything far larger (draining after that answer included) is cut by Kestrel.
    /// </summary>
    public const long BodySlackBytes = 64 * 1024;

    public void Configure(KestrelServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var limits = options.Limits;
        limits.MaxRequestHeadersTotalSize = 32 * 1024;
        limits.MaxRequestHeaderCount = 100;
        // Kestrel's own default is 30 s: a slow-header client would hold a connection three times as long.
        limits.RequestHeadersTimeout = TimeSpan.FromSeconds(10);
        limits.MinRequestBodyDataRate = new MinDataRate(bytesPerSecond: 240, gracePeriod: TimeSpan.FromSeconds(5));
        limits.MaxRequestBodySize = ingressOptions.Value.MaxBodyBytes + BodySlackBytes;
        // Bound again after the defaults, so an operator's value wins whether or not the host already bound it.
        configuration.GetSection(SectionName).Bind(limits);
    }
}
