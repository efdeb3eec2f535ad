namespace PortAzure.Dispatcher.Delivery;

internal enum AttemptOutcome
{
    Delivered,
    Transient,
    Permanent,
}

/// <summary>What one POST to Azure came to.</summary>
internal sealed record AttemptResult(
    AttemptOutcome Outcome,
    int? StatusCode,
    TimeSpan? RetryAfter,
    string Excerpt,
    string? Error,
    TimeSpan Duration)
{
    /// <summary>"2xx", "4xx", "timeout", "connection", "answer_lost": the status class for metrics.</summary>
    public string StatusClass => StatusCode is { } code ? $"{code / 100}xx" : Error ?? "error";
}

/// <summary>Standard Webhooks' rules with Azure's reality: only 2xx succeeds, and a few codes mean "later".</summary>
internal static class OutcomeClassifier
{
    public static AttemptOutcome Classify(int statusCode) => statusCode switch
    {
        >= 200 and < 300 => AttemptOutcome.Delivered,
        408 or 429 or 500 or 502 or 503 or 504 => AttemptOutcome.Transient,
        _ => AttemptOutcome.Permanent,
    };

    /// <summary>What a hint says when Azure may have started the pipeline on a try whose answer was lost.</summary>
    public const string CheckRuns = "check its runs before replaying";

    /// <summary>
    /// Whether Azure may have the run although the try failed: no answer in time, a connection dropped after the request, a
    /// gateway's 502 or 504 (a proxy in front of Azure passed the request on, and lost or waited too long for the answer).
    /// </summary>
    public static bool AnswerMayBeLost(AttemptResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        return result.StatusCode is 502 or 504 || result.Error is AzureWebhookClient.TimedOut or AzureWebhookClient.AnswerLost;
    }

    /// <summary>A line a person can act on, for a dead letter and for Port's run log.</summary>
    public static string Hint(int? statusCode, string? error) => statusCode switch
    {
        500 => "Azure DevOps answered 500. An incoming webhook answers 500 until it is active: run the pipeline that declares this webhook resource once by hand, then replay.",
        404 => "Azure DevOps answered 404: check the organisation name and that an Incoming WebHook service connection with exactly this webhook name exists.",
        400 or 401 or 403 => "Azure DevOps rejected the request: the service connection's Secret must equal the relay's secret for this target, and its Headers field must name the relay's AzureDevOps:SignatureHeader.",
        >= 300 and < 400 => "Azure DevOps answered with a redirect, which the relay does not follow: check AzureDevOps:BaseUrl.",
        429 => "Azure DevOps kept throttling this webhook (429) until the run's retry age (Dispatcher:Retry:MaxAgeHours) ran out; replay once it takes calls again.",
        408 or 502 or 503 or 504 => "Azure DevOps stayed unavailable until the retry budget ran out; replay once it is back.",
        null when error == AzureWebhookClient.TargetNotAllowed => "The target is not in AzureDevOps:Targets (or its name is not valid for Azure); the run was not posted on this try. Add the target to the list, then replay.",
        null when error == AzureWebhookClient.TimedOut => $"Azure DevOps did not answer within the request timeout until the retry budget ran out. It may have started the pipeline on such a try: {CheckRuns}.",
        null when error == AzureWebhookClient.AnswerLost => $"Azure DevOps's answer was lost until the retry budget ran out: the connection was reset or closed after the request was sent, or the answer was not HTTP (a proxy or load balancer in between?). It may have started the pipeline on such a try: {CheckRuns}.",
        null => "Azure DevOps could not be reached until the retry budget ran out: check network access and AzureDevOps:BaseUrl.",
        _ => $"Azure DevOps answered {statusCode}, which is not retried.",
    };
}
