using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>
/// Degraded while Port refuses the relay's API credentials, or has failed every report for a while (down, or the
/// credentials lack a permission): the reports then wait without being given up, so no failure count moves, and an
/// alert on /health is how someone learns that Port's run logs have stopped.
/// </summary>
internal sealed class PortCredentialsHealthCheck(PortApiClient client) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(client.CredentialsRefused
            ? HealthCheckResult.Degraded("Port refuses the relay's API credentials (Port:ClientId, Port:ClientSecret); reports to Port wait until it accepts them.")
            : client.Outage.Since is { } since
            ? HealthCheckResult.Degraded($"Port's API has failed every report since {since:o}; reports to Port wait, up to Dispatcher:Retry:MaxAgeHours.")
            : HealthCheckResult.Healthy("Port's API takes the relay's reports."));
}
