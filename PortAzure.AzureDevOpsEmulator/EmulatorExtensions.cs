using Microsoft.Extensions.DependencyInjection.Extensions;
using PortAzure.AzureDevOpsEmulator.Port;
using PortAzure.AzureDevOpsEmulator.Webhooks;

namespace PortAzure.AzureDevOpsEmulator;

/// <summary>
/// Wiring of the emulator, public so that tests can host it in-process
/// (<c>WebApplication.CreateBuilder()</c>, <c>AddEmulatorServices()</c>, <c>MapEmulatorEndpoints()</c>).
/// </summary>
public static class EmulatorExtensions
{
    private const string Description = """
        Azure DevOps + Port API emulator (development and tests only)

        Azure DevOps incoming webhooks
          POST   /{org}/_apis/public/distributedtask/webhooks/{webhook}?api-version=...
                 HMAC-SHA1 of the body in the signature header (hex, or sha1=<hex>)
          GET    /_emulator/requests[?webhook=]     recorded requests, arrival order
          GET    /_emulator/requests/count[?webhook=]   {"count","dropped"}: the newest Emulator:MaxRecorded (10,000; 0 = all) are kept
          POST   /_emulator/requests/take           the recorded requests, removed in the same step
          DELETE /_emulator/requests
          GET    /_emulator/behavior                scripted behaviour
          POST   /_emulator/behavior                {"webhook","responses":[{"status","retryAfter","delayMs","body"}],
                                                     "failureRate","failureStatuses","retryAfter","delayMs","seed"}
          DELETE /_emulator/behavior

        Port API
          POST   /v1/auth/access_token              {"clientId","clientSecret"}
          POST   /v1/actions/runs/{runId}/logs      {"message","terminationStatus","statusLabel"}  (bearer)
          PATCH  /v1/actions/runs/{runId}           {"status","statusLabel","link","summary","externalRunId"}  (bearer)
          GET    /_emulator/port/calls
          POST   /_emulator/port/calls/take         the recorded Port calls, removed in the same step
          DELETE /_emulator/port/calls
          GET    /_emulator/port/tokens
          GET    /_emulator/port/behavior
          POST   /_emulator/port/behavior           {"down","failNext","status","retryAfterSeconds","failRun","delayMs"}
          DELETE /_emulator/port/behavior

        Health: /health, /alive

        """;

    /// <summary>Registers the emulator's options (section <c>Emulator</c>) and state.</summary>
    public static WebApplicationBuilder AddEmulatorServices(this WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddOptions<EmulatorOptions>()
            .Bind(builder.Configuration.GetSection(EmulatorOptions.SectionName))
            .Validate(o => o.MaxRecorded >= 0, "Emulator:MaxRecorded must be 0 (keep every record) or more.")
            .ValidateOnStart();
        builder.Services.TryAddSingleton(TimeProvider.System);
        builder.Services.AddWebhookEmulation();
        builder.Services.AddPortEmulation();
        return builder;
    }

    /// <summary>Maps the Azure DevOps webhook route, the Port API and the <c>/_emulator</c> control endpoints.</summary>
    public static WebApplication MapEmulatorEndpoints(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapGet("/", () => Results.Text(Description));
        app.MapWebhookEmulation();
        app.MapPortEmulation();
        return app;
    }
}
