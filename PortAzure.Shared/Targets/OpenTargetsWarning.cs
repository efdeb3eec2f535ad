using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;

namespace PortAzure.Targets;

/// <summary>
/// An empty <c>AzureDevOps:Targets</c> accepts and delivers runs for any org and webhook Port's secret signs, and signs
/// the POSTs with that secret: right for a local run, and what a deployment made from the manifest alone (which carries
/// no targets) gets. Outside Development that is said at start, once, rather than found out later.
/// </summary>
internal sealed partial class OpenTargetsWarning(IOptions<AzureDevOpsOptions> options, IHostEnvironment environment, ILogger<OpenTargetsWarning> logger)
    : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (options.Value.Targets.Count == 0 && !environment.IsDevelopment())
        {
            Log.OpenTargets(logger);
        }
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(SharedEventIds.OpenTargets, LogLevel.Warning,
            "AzureDevOps:Targets is empty: runs are accepted for, and delivered to, any org and webhook that Port's secret signs. List the targets (AzureDevOps__Targets__0__Org, __Webhook; docs/deploy.md) to close the relay to the rest")]
        public static partial void OpenTargets(ILogger logger);
    }
}
