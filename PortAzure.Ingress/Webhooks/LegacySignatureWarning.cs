using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;

namespace PortAzure.Ingress.Webhooks;

/// <summary>
/// With legacy signatures accepted, every POST the Dispatcher makes to a target without a secret of its own carries the
/// body's HMAC-SHA1 under Port's secret: a legacy signature this Ingress accepts. The body guard holds for the
/// idempotency window, but the Dispatcher can post a body much later (a late retry, a replayed dead letter), and a copy
/// of that POST would be a new run on another webhook. Said at start, once, whenever legacy is on: the targets' secrets
/// are the Dispatcher's settings, which this service does not see.
/// </summary>
internal sealed partial class LegacySignatureWarning(IOptions<IngressOptions> ingress, ILogger<LegacySignatureWarning> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (ingress.Value.AllowLegacySha1Signature)
        {
            Log.LegacyOn(logger);
        }
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(EventIds.LegacySignaturesAccepted, LogLevel.Warning,
            "Ingress:AllowLegacySha1Signature is on: the Dispatcher's POST to a target without a secret of its own carries a signature of the body under Port's secret, which this Ingress accepts, so a copy of it could become a new run. Give every target its own secret on the Dispatcher (AzureDevOps__Targets__N__Secret)")]
        public static partial void LegacyOn(ILogger logger);
    }
}
