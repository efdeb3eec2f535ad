namespace PortAzure.AzureDevOpsEmulator.Webhooks;

/// <summary>One scripted answer; <see cref="DelayMs"/> defaults to the script's.</summary>
internal sealed record ScriptedResponse(int Status, string? RetryAfter = null, int? DelayMs = null, string? Body = null);

/// <summary>The body of <c>POST /_emulator/behavior</c>.</summary>
internal sealed record BehaviorScript(
    string? Webhook = null,
    IReadOnlyList<ScriptedResponse>? Responses = null,
    double FailureRate = 0,
    IReadOnlyList<int>? FailureStatuses = null,
    string? RetryAfter = null,
    int DelayMs = 0,
    int Seed = 0)
{
    public string? Validate()
    {
        if (FailureRate is < 0 or > 1 || double.IsNaN(FailureRate))
        {
            return "failureRate must be between 0 and 1";
        }
        if (DelayMs < 0 || Responses?.Any(r => r.DelayMs < 0) == true)
        {
            return "delayMs must not be negative";
        }
        if (Responses?.Any(r => r.Status is < 100 or > 599) == true ||
            FailureStatuses?.Any(s => s is < 100 or > 599) == true)
        {
            return "statuses must be between 100 and 599";
        }
        return null;
    }
}

/// <summary>What <c>GET /_emulator/behavior</c> shows.</summary>
internal sealed record BehaviorState(bool Active, BehaviorScript? Script, int Consumed, int Remaining);

/// <summary>
/// The scripted behaviour of the webhook route: scripted responses first, one per signature-valid
/// request, then random failures at <c>failureRate</c> (deterministic for a seed), otherwise 200.
/// </summary>
internal sealed class WebhookBehavior
{
    private static readonly int[] DefaultFailureStatuses = [StatusCodes.Status503ServiceUnavailable];

    private readonly Lock _gate = new();
    private BehaviorScript? _script;
    private int _consumed;
    private Random _random = new(0);

    public void Set(BehaviorScript script)
    {
        lock (_gate)
        {
            _script = script;
            _consumed = 0;
#pragma warning disable CA5394 // Deterministic on purpose: tests replay a seed.
            _random = new Random(script.Seed);
#pragma warning restore CA5394
        }
    }

    public void Reset()
    {
        lock (_gate)
        {
            _script = null;
            _consumed = 0;
        }
    }

    public BehaviorState Current()
    {
        lock (_gate)
        {
            var total = _script?.Responses?.Count ?? 0;
            return new(_script is not null, _script, _consumed, total - _consumed);
        }
    }

    /// <summary>The answer to a signature-valid request for <paramref name="webhook"/>.</summary>
    public WebhookAnswer Next(string webhook)
    {
        lock (_gate)
        {
            var script = _script;
            if (script is null ||
                (script.Webhook is not null && !string.Equals(script.Webhook, webhook, StringComparison.OrdinalIgnoreCase)))
            {
                return WebhookAnswer.Accepted("ok", 0);
            }

            if (script.Responses is { } responses && _consumed < responses.Count)
            {
                var scripted = responses[_consumed++];
                return WebhookAnswer.Injected(scripted.Status, "scripted", scripted.Body, scripted.RetryAfter, scripted.DelayMs ?? script.DelayMs);
            }

#pragma warning disable CA5394 // Deterministic on purpose: tests replay a seed.
            if (script.FailureRate > 0 && _random.NextDouble() < script.FailureRate)
            {
                var statuses = script.FailureStatuses is { Count: > 0 } s ? s : DefaultFailureStatuses;
                var status = statuses[_random.Next(statuses.Count)];
                return WebhookAnswer.Injected(status, "random_failure", null, script.RetryAfter, script.DelayMs);
            }
#pragma warning restore CA5394

            return WebhookAnswer.Accepted("ok", script.DelayMs);
        }
    }
}
