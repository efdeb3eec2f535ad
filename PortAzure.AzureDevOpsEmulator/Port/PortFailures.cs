namespace PortAzure.AzureDevOpsEmulator.Port;

/// <summary>The body of <c>POST /_emulator/port/behavior</c>; absent fields leave the setting as it is.</summary>
/// <param name="FailRun">A run id prefix: the calls for runs whose id starts with it fail with <paramref name="Status"/> ("" for none), the others go through.</param>
/// <param name="DelayMs">How long the calls about a run (not the token call) are held before their answer, 0 for none. The call is
/// recorded, and applied, with the answer it would have had before the hold: one cut short by the client still shows.</param>
internal sealed record PortBehaviorRequest(bool? Down = null, int? FailNext = null, int? Status = null, int? RetryAfterSeconds = null, string? FailRun = null,
    int? DelayMs = null);

/// <summary>What <c>GET /_emulator/port/behavior</c> shows.</summary>
internal sealed record PortBehaviorState(bool Down, int FailNext, int Status, int? RetryAfterSeconds, string? FailRun, int DelayMs);

/// <summary>Failure injection for the Port API: down (every call 503) or the next N calls failing.</summary>
internal sealed class PortFailures
{
    private readonly Lock _gate = new();
    private bool _down;
    private int _failNext;
    private int _status = StatusCodes.Status500InternalServerError;
    private int? _retryAfterSeconds;
    private string? _failRun;
    private int _delayMs;

    public PortBehaviorState Apply(PortBehaviorRequest request)
    {
        lock (_gate)
        {
            _down = request.Down ?? _down;
            if (request.FailNext is not null || request.FailRun is not null)
            {
                _failNext = request.FailNext ?? _failNext;
                _status = request.Status ?? StatusCodes.Status500InternalServerError;
                _retryAfterSeconds = request.RetryAfterSeconds;
            }
            if (request.FailRun is { } failRun)
            {
                _failRun = failRun.Length > 0 ? failRun : null;
            }
            _delayMs = request.DelayMs ?? _delayMs;
            return new(_down, _failNext, _status, _retryAfterSeconds, _failRun, _delayMs);
        }
    }

    public PortBehaviorState Reset() => Apply(new(Down: false, FailNext: 0, FailRun: "", DelayMs: 0));

    public PortBehaviorState Current()
    {
        lock (_gate)
        {
            return new(_down, _failNext, _status, _retryAfterSeconds, _failRun, _delayMs);
        }
    }

    /// <summary>How long to hold a call about a run before answering it (a slow Port).</summary>
    public TimeSpan Delay(string? runId)
    {
        lock (_gate)
        {
            return runId is null ? TimeSpan.Zero : TimeSpan.FromMilliseconds(_delayMs);
        }
    }

    /// <summary>The injected failure for this call (about <paramref name="runId"/>, if any), or null when it goes through.</summary>
    public PortAnswer? Next(string? runId)
    {
        lock (_gate)
        {
            if (_down)
            {
                return PortAnswer.Failure(StatusCodes.Status503ServiceUnavailable, "service_unavailable", "Port is down (emulated).");
            }
            if (runId is not null && _failRun is not null && runId.StartsWith(_failRun, StringComparison.Ordinal))
            {
                return PortAnswer.Failure(_status, "injected_failure", "Failure injected by the emulator for this run.");
            }
            if (_failNext > 0)
            {
                _failNext--;
                return PortAnswer.Failure(_status, "injected_failure", "Failure injected by the emulator.") with { RetryAfterSeconds = _retryAfterSeconds };
            }
            return null;
        }
    }
}
