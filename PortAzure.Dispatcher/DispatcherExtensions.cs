using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Http.Resilience;
using Microsoft.Extensions.Options;
using PortAzure.Dispatcher.Api;
using PortAzure.Dispatcher.Delivery;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Dispatcher.PortReporting;
using PortAzure.Redis;
using PortAzure.Security;
using PortAzure.Targets;

namespace PortAzure.Dispatcher;

public static class DispatcherExtensions
{
    /// <summary>Registers the delivery workers, the Azure and Port clients, the operator API and their options.</summary>
    public static WebApplicationBuilder AddDispatcherServices(this WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var services = builder.Services;

        builder.AddPortAzureRedisClient();

        services.AddOptions<DispatcherOptions>().BindConfiguration(DispatcherOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<DispatcherOptions>, DispatcherOptionsValidator>();
        services.AddAzureDevOpsTargets();
        services.AddOptions<PortOptions>().BindConfiguration(PortOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<PortOptions>, DispatcherPortOptionsValidator>();
        services.AddOptions<AdminOptions>().BindConfiguration(AdminOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<AdminOptions>, AdminOptionsValidator>();

        // The host waits for the delivery worker's grace period before it gives up on shutdown. Bound
        // here without validation, so that ValidateOnStart still reports every options error at once.
        services.AddOptions<HostOptions>().Configure(host =>
        {
            var dispatcher = new DispatcherOptions();
            builder.Configuration.GetSection(DispatcherOptions.SectionName).Bind(dispatcher);
            // A value out of range (NaN, 1e300) is the validator's to report, with every other error: converted here, it
            // threw while the host was built and hid them.
            var grace = dispatcher.ShutdownGraceSeconds is >= 0 and <= DispatcherOptions.MaxShutdownGraceSeconds ? dispatcher.ShutdownGraceSeconds : 0;
            host.ShutdownTimeout = TimeSpan.FromSeconds(grace + 5);
            // The reporter's stop (3 s for a call under way, then its hand-back) runs beside the worker's drain, not
            // after it: one after the other, a drain that used its whole grace left the reporter ~2 s of the timeout.
            // Reports written by the drain's last deliveries stay in the stream for the other Dispatchers.
            host.ServicesStopConcurrently = true;
        });

        services.TryAddSingleton(TimeProvider.System);
        services.AddProblemDetails(options => options.CustomizeProblemDetails = FallbackReason.Add);
        services.AddExceptionHandler<RedisUnavailableHandler>();
        services.AddExceptionHandler<RedisKeyDamagedHandler>();
        // No "servers": the generator names the address the request came to, which behind the Ingress's proxy is the
        // Dispatcher's own, and a client generated from the document would go around the edge's key check. Without it a
        // client uses the document's own origin: the Ingress.
        services.AddOpenApi(options => options.AddDocumentTransformer((document, _, _) =>
        {
            document.Servers = null;
            return Task.CompletedTask;
        }));

        services.AddHttpClient(AzureWebhookClient.HttpClientName)
            .ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler
            {
                // A redirect is a permanent failure to report, never a second POST somewhere else.
                AllowAutoRedirect = false,
                PooledConnectionLifetime = TimeSpan.FromMinutes(2),
                ConnectTimeout = TimeSpan.FromSeconds(10),
            })
            .ConfigureHttpClient(client => client.Timeout = Timeout.InfiniteTimeSpan)
            // No hidden retries: a repeated POST can start a second pipeline run. DeliveryProcessor decides.
            .RemoveAllResilienceHandlers();
        services.AddPortApiHttpClient();

        services.AddSingleton<AzureWebhookClient>();
        services.AddSingleton<PortApiClient>();
        services.AddSingleton<ConsumerIdentity>();
        services.AddSingleton<DeliveryStore>();
        services.AddSingleton<DeliveryProcessor>();
        services.AddSingleton<PortReporter>();
        services.AddSingleton<DispatcherMetrics>();
        services.AddSingleton<BacklogMonitor>();
        services.AddHostedService(sp => sp.GetRequiredService<BacklogMonitor>());
        // Stopped side by side (HostOptions above): the reports written by the drain's last deliveries stay in
        // the stream for the other Dispatchers.
        services.AddHostedService<PortReportingService>();
        services.AddHostedService<DeliveryWorker>();

        services.AddHealthChecks().AddCheck<BacklogHealthCheck>("backlog").AddCheck<PortCredentialsHealthCheck>("port-credentials");
        return builder;
    }
}

internal static class PortApiHttpClientSetup
{
    // Port's answers are a token or a short error: anything longer is a proxy's page, and is not worth holding in memory
    // one per call under way (16 at the default PortMaxConcurrentCalls).
    internal const int MaxResponseBytes = 64 * 1024;

    public static IServiceCollection AddPortApiHttpClient(this IServiceCollection services)
    {
        services.AddHttpClient(PortApiClient.HttpClientName)
            .ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler
            {
                // A redirect would re-send the token call's body, the client secret, to wherever Location points.
                AllowAutoRedirect = false,
                PooledConnectionLifetime = TimeSpan.FromMinutes(2),
                ConnectTimeout = TimeSpan.FromSeconds(10),
            })
            .ConfigureHttpClient((services, client) =>
            {
                // Read when a client is made (each call): a configuration reload applies to the next call.
                client.Timeout = TimeSpan.FromSeconds(services.GetRequiredService<IOptionsMonitor<DispatcherOptions>>().CurrentValue.PortRequestTimeoutSeconds);
                client.MaxResponseContentBufferSize = MaxResponseBytes;
            })
            // PortReportingService retries on its own schedule; a second layer would only multiply calls.
            .RemoveAllResilienceHandlers()
            // HttpClient's Trace lines mask header values in their text but keep them in their fields, which an OTLP
            // exporter sends: Port's bearer token, whenever someone turns System.Net.Http up to debug a call. The
            // reporter's own lines (2204, 2217) and the client's spans say what was called and what Port answered.
            .RemoveAllLoggers();
        return services;
    }
}

/// <summary>The Dispatcher signs with <c>Port:ClientSecret</c> unless every configured target has its own secret.</summary>
internal sealed class DispatcherPortOptionsValidator(IConfiguration configuration) : IValidateOptions<PortOptions>
{
    public ValidateOptionsResult Validate(string? name, PortOptions options)
    {
        // Bound here, not taken from IOptions<AzureDevOpsOptions>: that throws when its own validator fails, and would
        // hide this validator's errors behind its own.
        // Only the targets (strings), so that no other bad value of the section can throw here either.
        var targets = configuration.GetSection($"{AzureDevOpsOptions.SectionName}:{nameof(AzureDevOpsOptions.Targets)}").Get<List<AzureDevOpsTarget>>() ?? [];
        var everyTargetHasSecret = targets.Count > 0 && targets.All(t => !string.IsNullOrEmpty(t.Secret));
        var errors = options.SecretShapeErrors().ToList();
        if (string.IsNullOrEmpty(options.ClientSecret) && !everyTargetHasSecret)
        {
            errors.Add("Port:ClientSecret is required (environment variable Port__ClientSecret): it signs the POSTs to Azure DevOps for targets without their own AzureDevOps:Targets:N:Secret.");
        }
        else if (string.IsNullOrEmpty(options.ClientSecret) && !string.IsNullOrWhiteSpace(options.ClientId))
        {
            // Reporting needs both. With every target's own secret the start is legal without Port's, and a client id alone
            // turned reporting off without a word, where the operator had plainly asked for it.
            errors.Add("Port:ClientId is set without Port:ClientSecret (environment variable Port__ClientSecret): reporting to Port needs both; remove Port:ClientId to run without reporting.");
        }
        if (!options.ApiBaseUrl.IsAbsoluteUri || options.ApiBaseUrl.Scheme is not ("http" or "https"))
        {
            // Another scheme (ftp, file) started, and every report then failed at its first call until it was given up.
            errors.Add("Port:ApiBaseUrl must be an absolute http or https URL.");
        }
        else if (options.ApiBaseUrl.AbsolutePath is not ("/" or "/v1" or "/v1/") || options.ApiBaseUrl.Query.Length > 0)
        {
            // The calls' paths start at the root (/v1/...), so any other base path would be silently dropped. "/v1" is
            // how Port's own examples write the address, and it comes to the same URLs.
            errors.Add("Port:ApiBaseUrl must be the API's root or end in /v1, without another path or a query (such as https://api.port.io).");
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
