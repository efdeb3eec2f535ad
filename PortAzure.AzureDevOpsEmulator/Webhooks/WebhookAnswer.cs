using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.WebUtilities;

namespace PortAzure.AzureDevOpsEmulator.Webhooks;

/// <summary>What the webhook route answers to one request.</summary>
internal sealed record WebhookAnswer(
    int Status,
    string Outcome,
    string Body,
    string ContentType,
    string? RetryAfter = null,
    string? Location = null,
    int DelayMs = 0)
{
    public const string RedirectLocation = "http://127.0.0.1:9/elsewhere";

    private const string Json = "application/json; charset=utf-8";
    private const string Text = "text/plain; charset=utf-8";

    public static WebhookAnswer Accepted(string outcome, int delayMs) => new(StatusCodes.Status200OK, outcome, "{}", Json, DelayMs: delayMs);

    /// <summary>A rejection by the emulator itself: <c>{"reason","message"}</c>.</summary>
    public static WebhookAnswer Rejected(int status, string reason, string message) =>
        new(status, reason, JsonSerializer.Serialize(new { reason, message }, JsonSerializerOptions.Web), Json);

    /// <summary>A scripted or random status; non-2xx bodies default to Azure DevOps' error shape.</summary>
    public static WebhookAnswer Injected(int status, string outcome, string? body, string? retryAfter, int delayMs)
    {
        var contentType = body is null || body.TrimStart().StartsWith('{') || body.TrimStart().StartsWith('[') ? Json : Text;
        body ??= status is >= 200 and < 300 ? "{}" : AzureError(status);
        var location = status is >= 300 and < 400 ? RedirectLocation : null;
        return new(status, outcome, body, contentType, retryAfter, location, delayMs);
    }

    private static string AzureError(int status) => JsonSerializer.Serialize(
        new Dictionary<string, object?>
        {
            ["$id"] = "1",
            ["innerException"] = null,
            ["message"] = string.Create(CultureInfo.InvariantCulture,
                $"VS{status}: The service answered {status} {ReasonPhrases.GetReasonPhrase(status)} (injected by the Azure DevOps emulator)."),
            ["typeName"] = "Microsoft.VisualStudio.Services.WebApi.VssServiceResponseException, Microsoft.VisualStudio.Services.WebApi",
            ["typeKey"] = "VssServiceResponseException",
            ["errorCode"] = 0,
            ["eventId"] = 3000,
        });

    public async Task WriteAsync(HttpResponse response)
    {
        response.StatusCode = Status;
        if (RetryAfter is not null)
        {
            response.Headers.RetryAfter = RetryAfter;
        }
        if (Location is not null)
        {
            response.Headers.Location = Location;
        }
        response.ContentType = ContentType;
        await response.WriteAsync(Body, response.HttpContext.RequestAborted);
    }
}
