using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Options;

namespace PortAzure.AzureDevOpsEmulator.Port;

/// <summary>The Port REST API calls the relay makes: token, run logs and run updates.</summary>
internal sealed partial class PortApi(
    IOptionsMonitor<EmulatorOptions> options,
    PortState state,
    PortFailures failures,
    PortCallRecorder calls,
    TimeProvider time,
    ILogger<PortApi> logger)
{
    private static readonly string[] TerminationStatuses = ["SUCCESS", "FAILURE"];
    private static readonly string[] RunFields = ["status", "statusLabel", "link", "summary", "externalRunId"];

    private delegate PortAnswer Operation(HttpRequest request, string? runId, JsonObject? body);

    public Task<IResult> IssueTokenAsync(HttpContext context) => HandleAsync(context, null, IssueToken);

    public Task<IResult> AddLogAsync(HttpContext context, string runId) => HandleAsync(context, runId, AddLog);

    public Task<IResult> UpdateRunAsync(HttpContext context, string runId) => HandleAsync(context, runId, UpdateRun);

    private async Task<IResult> HandleAsync(HttpContext context, string? runId, Operation operation)
    {
        var request = context.Request;
        var receivedAt = time.GetUtcNow();
        string bodyText;
        try
        {
            using var reader = new StreamReader(request.Body, leaveOpen: true);
            bodyText = await reader.ReadToEndAsync(context.RequestAborted);
        }
        catch (Exception e) when (e is OperationCanceledException or BadHttpRequestException or IOException)
        {
            // The client went away mid-body: nothing was received to record or answer.
            return Results.Empty;
        }

        var sequence = calls.NextSequence();

        var parsed = ParseObject(bodyText);
        var answer = failures.Next(runId) ?? operation(request, runId, parsed);
        // The token call carries the client secret: a developer may run the emulator with a real one, and the calls are
        // served without a key (GET /_emulator/port/calls) and logged. Kept: that a secret was sent, not what it was.
        if (parsed?["clientSecret"] is not null)
        {
            parsed["clientSecret"] = "***";
            bodyText = parsed.ToJsonString();
        }

        calls.Add(new PortCall(
            sequence,
            receivedAt,
            request.Method,
            request.Path.Value ?? "",
            runId,
            bodyText,
            request.Headers.Authorization.Count > 0,
            answer.Status,
            answer.ErrorCode));
        LogCall(logger, sequence, request.Method, request.Path.Value ?? "", answer.Status, answer.ErrorCode ?? "none");
        LogBody(logger, sequence, bodyText);

        // Recorded first, so that a test sees the call arrive while its answer is held.
        if (failures.Delay(runId) is { Ticks: > 0 } delay)
        {
            try
            {
                await Task.Delay(delay, time, context.RequestAborted);
            }
            catch (OperationCanceledException)
            {
                return Results.Empty;
            }
        }

        if (answer.RetryAfterSeconds is { } retryAfter)
        {
            context.Response.Headers.RetryAfter = retryAfter.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        return Results.Json(answer.Body, statusCode: answer.Status);
    }

    private PortAnswer IssueToken(HttpRequest request, string? runId, JsonObject? body)
    {
        var clientId = GetString(body, "clientId");
        var clientSecret = GetString(body, "clientSecret");
        if (string.IsNullOrEmpty(clientId) || string.IsNullOrEmpty(clientSecret))
        {
            return PortAnswer.Failure(StatusCodes.Status400BadRequest, "invalid_body", "clientId and clientSecret are required.");
        }

        var settings = options.CurrentValue.Port;
        var configured = !string.IsNullOrEmpty(settings.ClientId) || !string.IsNullOrEmpty(settings.ClientSecret);
        if (configured && (!string.Equals(clientId, settings.ClientId, StringComparison.Ordinal) ||
                           !string.Equals(clientSecret, settings.ClientSecret, StringComparison.Ordinal)))
        {
            return PortAnswer.Failure(StatusCodes.Status401Unauthorized, "invalid_credentials", "The client credentials are not valid.");
        }

        var token = state.IssueToken(TimeSpan.FromSeconds(settings.TokenLifetimeSeconds));
        return PortAnswer.Ok(StatusCodes.Status200OK, new
        {
            ok = true,
            accessToken = token,
            expiresIn = settings.TokenLifetimeSeconds,
            tokenType = "Bearer",
        });
    }

    private PortAnswer AddLog(HttpRequest request, string? runId, JsonObject? body)
    {
        if (!state.IsAuthorized(request.Headers.Authorization))
        {
            return Unauthorized();
        }

        var message = GetString(body, "message");
        var terminationStatus = GetString(body, "terminationStatus");
        if (message is null || (body?["terminationStatus"] is not null && !TerminationStatuses.Contains(terminationStatus)))
        {
            return PortAnswer.Failure(StatusCodes.Status400BadRequest, "invalid_body",
                "message is required; terminationStatus, when given, is SUCCESS or FAILURE.");
        }
        if (terminationStatus is not null && !state.TryTerminate(runId!, terminationStatus))
        {
            return PortAnswer.Failure(StatusCodes.Status422UnprocessableEntity, "run_locked",
                "The run has already been terminated and is locked.");
        }
        return PortAnswer.Ok(StatusCodes.Status201Created, new { ok = true });
    }

    private PortAnswer UpdateRun(HttpRequest request, string? runId, JsonObject? body)
    {
        if (!state.IsAuthorized(request.Headers.Authorization))
        {
            return Unauthorized();
        }
        if (body is null || !RunFields.Any(body.ContainsKey))
        {
            return PortAnswer.Failure(StatusCodes.Status400BadRequest, "invalid_body",
                "Give at least one of status, statusLabel, link, summary, externalRunId.");
        }
        return PortAnswer.Ok(StatusCodes.Status200OK, new { ok = true });
    }

    private static PortAnswer Unauthorized() =>
        PortAnswer.Failure(StatusCodes.Status401Unauthorized, "unauthorized", "A valid bearer token is required.");

    private static JsonObject? ParseObject(string text)
    {
        try
        {
            return JsonNode.Parse(text) as JsonObject;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static string? GetString(JsonObject? body, string name) =>
        body?[name] is JsonValue value && value.TryGetValue<string>(out var text) ? text : null;

    [LoggerMessage(Level = LogLevel.Information, Message = "Port call #{Sequence} {Method} {Path} answered {Status} (error: {Error})")]
    private static partial void LogCall(ILogger logger, long sequence, string method, string path, int status, string error);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Port call #{Sequence} body: {Body}")]
    private static partial void LogBody(ILogger logger, long sequence, string body);
}
