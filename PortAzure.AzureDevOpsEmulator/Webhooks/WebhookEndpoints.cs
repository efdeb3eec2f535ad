using System.Text.Json;

namespace PortAzure.AzureDevOpsEmulator.Webhooks;

internal static partial class WebhookEndpoints
{
    public const string Route = "/{org}/_apis/public/distributedtask/webhooks/{webhook}";

    public static IServiceCollection AddWebhookEmulation(this IServiceCollection services) => services
        .AddSingleton<RecordedLog<RecordedWebhookRequest>>()
        .AddSingleton<WebhookRecorder>()
        .AddSingleton<WebhookBehavior>()
        .AddSingleton<WebhookReceiver>();

    public static IEndpointRouteBuilder MapWebhookEmulation(this IEndpointRouteBuilder endpoints)
    {
        // Every method, so that a wrong one is recorded (and answered 405) too.
        endpoints.Map(Route, (HttpContext context, string org, string webhook, WebhookReceiver receiver) =>
            receiver.HandleAsync(context, org, webhook));

        var control = endpoints.MapGroup("/_emulator");
        control.MapGet("/requests", (string? webhook, WebhookRecorder recorder) => Results.Ok(recorder.Snapshot(webhook)));
        control.MapGet("/requests/count", (string? webhook, WebhookRecorder recorder) => Results.Ok(new { count = recorder.Count(webhook), dropped = recorder.Dropped }));
        control.MapPost("/requests/take", (WebhookRecorder recorder) => Results.Ok(recorder.Take()));
        control.MapDelete("/requests", (WebhookRecorder recorder) =>
        {
            recorder.Clear();
            return Results.NoContent();
        });

        control.MapGet("/behavior", (WebhookBehavior behavior) => Results.Ok(behavior.Current()));
        control.MapPost("/behavior", SetBehaviorAsync);
        control.MapDelete("/behavior", (WebhookBehavior behavior, ILogger<WebhookBehavior> logger) =>
        {
            behavior.Reset();
            LogBehaviorReset(logger);
            return Results.NoContent();
        });
        return endpoints;
    }

    private static async Task<IResult> SetBehaviorAsync(HttpRequest request, WebhookBehavior behavior, ILogger<WebhookBehavior> logger)
    {
        BehaviorScript? script;
        try
        {
            script = await JsonSerializer.DeserializeAsync<BehaviorScript>(request.Body, JsonSerializerOptions.Web, request.HttpContext.RequestAborted);
        }
        catch (JsonException e)
        {
            return Results.BadRequest(new { error = "invalid_body", message = e.Message });
        }
        if (script is null)
        {
            return Results.BadRequest(new { error = "invalid_body", message = "A JSON object is required." });
        }
        if (script.Validate() is { } problem)
        {
            return Results.BadRequest(new { error = "invalid_body", message = problem });
        }

        behavior.Set(script);
        LogBehaviorSet(logger, script.Webhook ?? "*", script.Responses?.Count ?? 0, script.FailureRate, script.DelayMs);
        return Results.Ok(behavior.Current());
    }

    [LoggerMessage(Level = LogLevel.Information,
        Message = "Webhook behaviour set for {Webhook}: {Scripted} scripted responses, failure rate {FailureRate}, delay {DelayMs} ms")]
    private static partial void LogBehaviorSet(ILogger logger, string webhook, int scripted, double failureRate, int delayMs);

    [LoggerMessage(Level = LogLevel.Information, Message = "Webhook behaviour reset to normal")]
    private static partial void LogBehaviorReset(ILogger logger);
}
