using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using PortAzure.Diagnostics;

namespace Microsoft.Extensions.Hosting;

/// <summary>
/// The shared Aspire conventions: OpenTelemetry, health checks, service discovery and resilience.
/// </summary>
public static class Extensions
{
    public const string HealthEndpointPath = "/health";
    public const string AlivenessEndpointPath = "/alive";
    public const string LiveTag = "live";

    public static TBuilder AddServiceDefaults<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.ConfigureOpenTelemetry();
        builder.AddDefaultHealthChecks();
        builder.Services.AddServiceDiscovery();
        builder.Services.ConfigureHttpClientDefaults(http =>
        {
            // Every client gets retries by default. A client that must never repeat a request on
            // its own (the Dispatcher's Azure client) removes them with RemoveAllResilienceHandlers().
            http.AddStandardResilienceHandler();
            http.AddServiceDiscovery();
        });
        return builder;
    }

    public static TBuilder ConfigureOpenTelemetry<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.Logging.AddOpenTelemetry(logging =>
        {
            logging.IncludeFormattedMessage = true;
            logging.IncludeScopes = true;
        });

        builder.Services.AddOpenTelemetry()
            .WithMetrics(metrics => metrics
                .AddAspNetCoreInstrumentation()
                .AddHttpClientInstrumentation()
                .AddRuntimeInstrumentation()
                .AddMeter(PortAzureDiagnostics.Name))
            .WithTracing(tracing => tracing
                .AddSource(builder.Environment.ApplicationName)
                .AddSource(PortAzureDiagnostics.Name)
                .AddAspNetCoreInstrumentation(options =>
                    // Probes would drown the runs in the trace list.
                    options.Filter = context =>
                        !context.Request.Path.StartsWithSegments(HealthEndpointPath) &&
                        !context.Request.Path.StartsWithSegments(AlivenessEndpointPath))
                .AddHttpClientInstrumentation());

        // A sampler set here wins over OTEL_TRACES_SAMPLER, which the SDK would then ignore without a word: one given there
        // (sampling in a deployment) stands, Redis command spans outside a trace with it. Except always_on, which the AppHost's
        // run mode sets for the local dashboard, where the Redis command spans are on: kept, without the polls' commands.
        var configured = builder.Configuration["OTEL_TRACES_SAMPLER"]?.Trim();
        if (string.IsNullOrEmpty(configured) || string.Equals(configured, "always_on", StringComparison.OrdinalIgnoreCase))
        {
            Sampler others = string.IsNullOrEmpty(configured) ? new ParentBasedSampler(new AlwaysOnSampler()) : new AlwaysOnSampler();
            builder.Services.AddOpenTelemetry().WithTracing(tracing => tracing.SetSampler(new RedisCommandSampler(others)));
        }

        if (!string.IsNullOrWhiteSpace(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        {
            builder.Services.AddOpenTelemetry().UseOtlpExporter();
        }
        return builder;
    }

    public static TBuilder AddDefaultHealthChecks<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.Services.AddHealthChecks()
            .AddCheck("self", () => HealthCheckResult.Healthy(), [LiveTag]);
        return builder;
    }

    /// <summary>
    /// Maps <c>/health</c> (readiness: every check, Redis included) and <c>/alive</c> (liveness: the
    /// process answers). In every environment: container platforms probe them in production too.
    /// They reveal nothing but a status word.
    /// </summary>
    public static WebApplication MapDefaultEndpoints(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapHealthChecks(HealthEndpointPath).DisableHttpMetrics();
        app.MapHealthChecks(AlivenessEndpointPath, new HealthCheckOptions
        {
            Predicate = r => r.Tags.Contains(LiveTag),
        }).DisableHttpMetrics();
        return app;
    }
}
