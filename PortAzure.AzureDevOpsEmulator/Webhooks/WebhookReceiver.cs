using System.Text;
using Microsoft.Extensions.Options;

namespace PortAzure.AzureDevOpsEmulator.Webhooks;

/// <summary>
/// Stands in for <c>POST /{org}/_apis/public/distributedtask/webhooks/{webhook}?api-version=…</c>:
/// checks the HMAC-SHA1 signature, answers as scripted and records every request.
/// </summary>
internal sealed partial class WebhookReceiver(
    IOptionsMonitor<EmulatorOptions> options,
    WebhookRecorder recorder,
    WebhookBehavior behavior,
    TimeProvider time,
    ILogger<WebhookReceiver> logger)
{
    public async Task HandleAsync(HttpContext context, string organization, string webhook)
    {
        var request = context.Request;
        var receivedAt = time.GetUtcNow();
        byte[] body;
        try
        {
            body = await ReadBodyAsync(request, context.RequestAborted);
        }
        catch (Exception e) when (e is OperationCanceledException or BadHttpRequestException or IOException)
        {
            // The client went away mid-body: nothing was received to record or answer.
            LogIncomplete(logger, organization, webhook, e.Message);
            return;
        }

        var sequence = recorder.NextSequence();
        var settings = options.CurrentValue;

        var signature = WebhookSignature.Verify(
            request.Headers[settings.SignatureHeader].FirstOrDefault(), settings.SecretFor(webhook), body);
        var answer = Decide(request, signature, webhook);

        var bodyText = Encoding.UTF8.GetString(body);
        recorder.Add(new RecordedWebhookRequest(
            sequence,
            receivedAt,
            request.Method,
            request.Path.Value ?? "",
            request.QueryString.Value ?? "",
            organization,
            webhook,
            request.Headers.ToDictionary(h => h.Key, h => h.Value.ToArray(), StringComparer.OrdinalIgnoreCase),
            Convert.ToBase64String(body),
            bodyText,
            answer.Status,
            signature == SignatureCheck.Valid,
            answer.Outcome));

        LogReceived(logger, sequence, organization, webhook, body.Length, answer.Status, answer.Outcome);
        LogBody(logger, sequence, bodyText);

        if (answer.DelayMs > 0)
        {
            try
            {
                // Real time on purpose: it simulates a slow Azure against real client timeouts.
                await Task.Delay(answer.DelayMs, context.RequestAborted);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
        await answer.WriteAsync(context.Response);
    }

    private WebhookAnswer Decide(HttpRequest request, SignatureCheck signature, string webhook)
    {
        if (!HttpMethods.IsPost(request.Method))
        {
            return WebhookAnswer.Rejected(StatusCodes.Status405MethodNotAllowed, "method_not_allowed",
                "The webhook endpoint accepts POST only.");
        }
        if (string.IsNullOrWhiteSpace(request.Query["api-version"]))
        {
            return WebhookAnswer.Rejected(StatusCodes.Status400BadRequest, "api_version_missing",
                "No api-version was supplied for the POST request.");
        }
        return signature switch
        {
            SignatureCheck.Missing => WebhookAnswer.Rejected(StatusCodes.Status400BadRequest, "signature_missing",
                "The request carries no signature header."),
            SignatureCheck.Mismatch => WebhookAnswer.Rejected(StatusCodes.Status400BadRequest, "signature_mismatch",
                "The signature does not match the HMAC-SHA1 of the request body."),
            _ => behavior.Next(webhook),
        };
    }

    private static async Task<byte[]> ReadBodyAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        await request.Body.CopyToAsync(buffer, cancellationToken);
        return buffer.ToArray();
    }

    [LoggerMessage(Level = LogLevel.Information,
        Message = "Webhook request #{Sequence} for {Organization}/{Webhook} ({Length} bytes) answered {Status} ({Outcome})")]
    private static partial void LogReceived(ILogger logger, long sequence, string organization, string webhook, int length, int status, string outcome);

    [LoggerMessage(Level = LogLevel.Information, Message = "Webhook request for {Organization}/{Webhook} ended before its body was complete: {Reason}")]
    private static partial void LogIncomplete(ILogger logger, string organization, string webhook, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Webhook request #{Sequence} body: {Body}")]
    private static partial void LogBody(ILogger logger, long sequence, string body);
}
