using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;
using PortAzure.Targets;

namespace PortAzure.Ingress.Webhooks;

/// <summary>
/// With legacy signatures accepted, every POST the Dispatcher makes to a target without a secret of its own carries the
/// body's HMAC-SHA1 under Port's secret: a legacy signature this Ingress accepts. The body guard holds for the
/// idempotency window, but the Dispatcher can post a body much later (a late retry, a replayed dead letter), and a copy
/// of that POST would be a new run on another webhook. Said at start, once.
/// </summary>
internal sealed partial class LegacySignatureWarning(IOptions<IngressOptions> ingress, IOptions<AzureDevOpsOptions> azure,
    ILogger<LegacySignatureWarning> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (ingress.Value.AllowLegacySha1Signature)
        {
            var targets = azure.Value.Targets;
            var shared = targets.Count(t => string.IsNullOrEmpty(t.Secret));
            if (targets.Count == 0 || shared > 0)
            {
                Log.SharedSecret(logger, targets.Count == 0 ? "every target (AzureDevOps:Targets is empty)" : $"{shared} of the {targets.Count} targets");
            }
        }
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(EventIds.LegacyWithSharedSecret, LogLevel.Warning,
            "Ingress:AllowLegacySha1Signature is on while {Which} sign their POSTs to Azure with Port's secret: a copy of such a POST is a valid legacy call here, and could become a new run. Give each target its own AzureDevOps__Targets__N__Secret")]
        public static partial void SharedSecret(ILogger logger, string which);
    }
}
