using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;
using PortAzure.Redis;
using PortAzure.Security;
using PortAzure.Signing;
using PortAzure.Targets;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>
/// POSTs a run's exact bytes to an Azure DevOps incoming webhook, signed as Azure checks it.
/// Exactly one request per call: its HttpClient has no resilience handler, and no redirect is followed.
/// </summary>
internal sealed partial class AzureWebhookClient(
    IHttpClientFactory httpClientFactory,
    IOptionsMonitor<AzureDevOpsOptions> azureOptions,
    IOptionsMonitor<PortOptions> portOptions,
    IOptionsMonitor<DispatcherOptions> dispatcherOptions,
    TimeProvider timeProvider)
{
    public const string HttpClientName = "azure-devops";
    public const string ApiVersion = "6.0-preview";
    public const string TargetNotAllowed = "target_not_allowed";

    /// <summary>No answer within Dispatcher:RequestTimeoutSeconds: Azure may have the POST.</summary>
    public const string TimedOut = "timeout";

    /// <summary>No connection was made (refused, name not resolved, TLS failed, connect timeout): the POST never left.</summary>
    public const string ConnectionFailed = "connection";

    /// <summary>The connection failed after it was made (a reset, a close without an answer, an answer that is not HTTP): Azure may have the POST.</summary>
    public const string AnswerLost = "answer_lost";
    private const int ExcerptLength = 300;

    public static Uri BuildUri(Uri baseUrl, string org, string webhook)
    {
        ArgumentNullException.ThrowIfNull(baseUrl);
        // Validated here again: these two segments are the only user input in the URL.
        if (!TargetNames.IsValidOrg(org) || !TargetNames.IsValidWebhook(webhook))
        {
            throw new ArgumentException($"'{org}/{webhook}' is not a valid Azure DevOps target.");
        }
        var root = baseUrl.AbsoluteUri.TrimEnd('/');
        return new Uri($"{root}/{org}/_apis/public/distributedtask/webhooks/{webhook}?api-version={ApiVersion}");
    }

    public async Task<AttemptResult> PostAsync(DeliveryEntry entry, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var azure = azureOptions.CurrentValue;
        if (!azure.IsAllowed(entry.Org, entry.Webhook) || !TargetNames.IsValidOrg(entry.Org) || !TargetNames.IsValidWebhook(entry.Webhook))
        {
            return new AttemptResult(AttemptOutcome.Permanent, null, null, "", TargetNotAllowed, TimeSpan.Zero);
        }
        // An empty per-target secret is "not set", as the options validator and the docs have it: never an empty HMAC key.
        var secret = azure.FindTarget(entry.Org, entry.Webhook)?.Secret is { Length: > 0 } own ? own : portOptions.CurrentValue.ClientSecret ?? "";

        using var request = new HttpRequestMessage(HttpMethod.Post, BuildUri(azure.BaseUrl, entry.Org, entry.Webhook));
        var content = new ReadOnlyMemoryContent(entry.Body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Content = content;
        request.Headers.TryAddWithoutValidation(azure.SignatureHeader,
            AzureSignature.Compute(entry.Body.Span, Encoding.UTF8.GetBytes(secret), azure.SignatureFormat));
        request.Headers.TryAddWithoutValidation(WebhookHeaders.IdempotencyKey, entry.DeliveryId);
        if (entry.RunId is not null)
        {
            request.Headers.TryAddWithoutValidation(WebhookHeaders.RunId, entry.RunId);
        }

        using var timeout = new CancellationTokenSource(dispatcherOptions.CurrentValue.RequestTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        var started = Stopwatch.GetTimestamp();
        try
        {
            using var response = await httpClientFactory.CreateClient(HttpClientName).SendAsync(request, HttpCompletionOption.ResponseHeadersRead, linked.Token);
            var excerpt = await ReadExcerptAsync(response, linked.Token);
            var status = (int)response.StatusCode;
            return new AttemptResult(OutcomeClassifier.Classify(status), status, RetryAfter(response), excerpt, null, Stopwatch.GetElapsedTime(started));
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // Our request timeout; otherwise the handler's ConnectTimeout (connection and TLS handshake), which ends in
            // a cancellation too, not an HttpRequestException: a connection failure, not a crash of the attempt.
            return new AttemptResult(AttemptOutcome.Transient, null, null, "", timeout.IsCancellationRequested ? TimedOut : ConnectionFailed,
                Stopwatch.GetElapsedTime(started));
        }
        catch (HttpRequestException ex)
        {
            // The handler names the phase: only these come before a connection exists. Whatever failed after it (the request
            // may have been written whole) must not be told as "could not be reached": a replay could start a second run.
            var error = ex.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError
                or HttpRequestError.SecureConnectionError or HttpRequestError.ProxyTunnelError ? ConnectionFailed : AnswerLost;
            return new AttemptResult(AttemptOutcome.Transient, null, null, Describe(ex), error, Stopwatch.GetElapsedTime(started));
        }
    }

    /// <summary>
    /// What failed, for the attempt's log ("ResponseEnded: ... The response ended prematurely."). The handler's messages hold
    /// no header, but a proxy's address is given whole, with its user and password: those are masked.
    /// </summary>
    internal static string Describe(HttpRequestException exception)
    {
        var text = UserInfo().Replace($"{exception.HttpRequestError}: {ExceptionMessages.Of(exception)}", "://***@");
        return text.Length > ExcerptLength ? text[..ExcerptLength] : text;
    }

    // Everything between a scheme's "://" and the host's "@": a URL's user and password.
    [GeneratedRegex(@"://[^/\s@'""]*@")]
    private static partial Regex UserInfo();

    private TimeSpan? RetryAfter(HttpResponseMessage response)
    {
        if (response.Headers.RetryAfter is not { } retryAfter)
        {
            return null;
        }
        if (retryAfter.Delta is { } delta)
        {
            return delta;
        }
        return retryAfter.Date is { } date ? date - timeProvider.GetUtcNow() : null;
    }

    /// <summary>
    /// Once the status line is in, the outcome is decided: a body that fails to arrive must not turn a
    /// 2xx (a pipeline run started) into a retry.
    /// </summary>
    private static async Task<string> ReadExcerptAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        try
        {
            return await ReadExcerptCoreAsync(response, cancellationToken);
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
        {
            return "";
        }
    }

    private static async Task<string> ReadExcerptCoreAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        var buffer = new byte[ExcerptLength * 4];
        await using var stream = await response.Content.ReadAsStreamAsync(cancellationToken);
        var total = 0;
        int read;
        while (total < buffer.Length && (read = await stream.ReadAsync(buffer.AsMemory(total), cancellationToken)) > 0)
        {
            total += read;
        }
        var text = Encoding.UTF8.GetString(buffer, 0, total);
        return text.Length > ExcerptLength ? text[..ExcerptLength] : text;
    }
}
