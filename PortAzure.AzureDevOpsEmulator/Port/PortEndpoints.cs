using System.Text.Json;

namespace PortAzure.AzureDevOpsEmulator.Port;

internal static partial class PortEndpoints
{
    public static IServiceCollection AddPortEmulation(this IServiceCollection services) => services
        .AddSingleton<PortState>()
        .AddSingleton<PortFailures>()
        .AddSingleton<RecordedLog<PortCall>>()
        .AddSingleton<PortCallRecorder>()
        .AddSingleton<PortApi>();

    public static IEndpointRouteBuilder MapPortEmulation(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapPost("/v1/auth/access_token", (HttpContext context, PortApi api) => api.IssueTokenAsync(context));
        endpoints.MapPost("/v1/actions/runs/{runId}/logs", (HttpContext context, string runId, PortApi api) => api.AddLogAsync(context, runId));
        endpoints.MapPatch("/v1/actions/runs/{runId}", (HttpContext context, string runId, PortApi api) => api.UpdateRunAsync(context, runId));

        var control = endpoints.MapGroup("/_emulator/port");
        control.MapGet("/calls", (PortCallRecorder calls) => Results.Ok(calls.Snapshot()));
        control.MapPost("/calls/take", (PortCallRecorder calls) => Results.Ok(calls.Take()));
        control.MapDelete("/calls", (PortCallRecorder calls) =>
        {
            calls.Clear();
            return Results.NoContent();
        });
        control.MapGet("/tokens", (PortState state) => Results.Ok(new { issued = state.TokensIssued }));
        control.MapGet("/behavior", (PortFailures failures) => Results.Ok(failures.Current()));
        control.MapPost("/behavior", SetBehaviorAsync);
        control.MapDelete("/behavior", (PortFailures failures, ILogger<PortFailures> logger) =>
        {
            var current = failures.Reset();
            LogBehavior(logger, current.Down, current.FailNext, current.Status);
            return Results.NoContent();
        });
        return endpoints;
    }

    private static async Task<IResult> SetBehaviorAsync(HttpRequest request, PortFailures failures, ILogger<PortFailures> logger)
    {
        PortBehaviorRequest? change;
        try
        {
            change = await JsonSerializer.DeserializeAsync<PortBehaviorRequest>(request.Body, JsonSerializerOptions.Web, request.HttpContext.RequestAborted);
        }
        catch (JsonException e)
        {
            return Results.BadRequest(new { error = "invalid_body", message = e.Message });
        }
        if (change is null || change.FailNext < 0 || change.Status is < 100 or > 599 || change.RetryAfterSeconds < 0 || change.DelayMs < 0)
        {
            return Results.BadRequest(new { error = "invalid_body", message = "failNext, retryAfterSeconds and delayMs must not be negative; status is 100 to 599." });
        }

        var current = failures.Apply(change);
        LogBehavior(logger, current.Down, current.FailNext, current.Status);
        return Results.Ok(current);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Port behaviour: down {Down}, failing the next {FailNext} calls with {Status}")]
    private static partial void LogBehavior(ILogger logger, bool down, int failNext, int status);
}
