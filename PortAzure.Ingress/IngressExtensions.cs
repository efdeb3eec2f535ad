using Microsoft.AspNetCore.HttpOverrides;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;
using PortAzure.Ingress.Edge;
using PortAzure.Ingress.Queue;
using PortAzure.Ingress.Webhooks;
using PortAzure.Redis;
using PortAzure.Security;
using PortAzure.Targets;

namespace PortAzure.Ingress;

public static class IngressExtensions
{
    public const string WebhookRoute = "/{org}/_apis/public/distributedtask/webhooks/{webhook}";

    /// <summary>Registers the webhook edge, the queue, the operator API proxy and their options.</summary>
    public static WebApplicationBuilder AddIngressServices(this WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);

        builder.AddPortAzureRedisClient();

        builder.Services.AddOptions<IngressOptions>().BindConfiguration(IngressOptions.SectionName).ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<IngressOptions>, IngressOptionsValidator>();
        builder.Services.AddSingleton<IValidateOptions<IngressOptions>, ReplicaWaitValidator>();
        builder.Services.AddOptions<PortOptions>().BindConfiguration(PortOptions.SectionName).ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<PortOptions>, IngressPortOptionsValidator>();
        builder.Services.AddAzureDevOpsTargets();
        builder.Services.AddOptions<AdminOptions>().BindConfiguration(AdminOptions.SectionName).ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<AdminOptions>, AdminOptionsValidator>();

        builder.Services.TryAddSingleton(TimeProvider.System);
        builder.Services.AddProblemDetails(options => options.CustomizeProblemDetails = FallbackReason.Add);
        builder.Services.AddWebhookRateLimiting();
        builder.Services.AddSingleton<IConfigureOptions<KestrelServerOptions>, KestrelLimitsSetup>();
        builder.Services.AddSingleton<IPostConfigureOptions<ForwardedHeadersOptions>, TrustedProxiesSetup>();
        builder.Services.AddSingleton<IngressMetrics>();
        builder.Services.AddSingleton<RunQueue>();
        builder.Services.AddSingleton<ReplicaConfirmation>();
        builder.Services.AddSingleton<WebhookHandler>();
        builder.Services.AddSingleton<WebhookConcurrencyLimit>();
        builder.Services.AddSingleton<OperatorApiRefusalLog>();
        builder.Services.AddHostedService<LegacySignatureWarning>();

        builder.Services.AddReverseProxy()
            .LoadFromConfig(builder.Configuration.GetSection("ReverseProxy"))
            .AddServiceDiscoveryDestinationResolver();
        return builder;
    }

    /// <summary>Maps the webhook endpoint and the guarded operator API routes.</summary>
    public static WebApplication MapIngress(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.UseExceptionHandler();
        app.UseStatusCodePages();
        app.UseRateLimiter();

        app.MapPost(WebhookRoute, (HttpContext context, string org, string webhook, WebhookHandler handler) =>
            handler.HandleAsync(context, org, webhook))
            .RequireWebhookRateLimits();

        app.MapReverseProxy(proxy =>
        {
            proxy.UseOperatorApiKey();
            proxy.UseOperatorApiBodyLimit();
            proxy.UseDispatcherUnavailableProblem();
        });
        return app;
    }
}
