namespace PortAzure.AzureDevOpsEmulator.Port;

/// <summary>The body of <c>POST /_emulator/port/behavior</c>; absent fields leave the setting as it is.</summary>
internal sealed record PortBehaviorRequest(bool? Down = null, int? FailNext = null, int? Status = null, int? RetryAfterSeconds = null);

/// <summary>What <c>GET /_emulator/port/behavior</c> shows.</summary>
internal sealed record PortBehaviorState(bool Down, int FailNext, int Status, int? RetryAfterSeconds);

/// <summary>Failure injection for the Port API: down (every call 503) or the next N calls failing.</summary>
internal sealed class PortFailures
{
    private readonly Lock _gate = new();
    private bool _down;
    private int _failNext;
    private int _status = StatusCodes.Status500InternalServerError;
    private int? _retryAfterSeconds;

    public PortBehaviorState Apply(PortBehaviorRequest request)
    {
        lock (_gate)
        {
            _down = request.Down ?? _down;
            if (request.FailNext is { } failNext)
            {
                _failNext = failNext;
                _status = request.Status ?? StatusCodes.Status500InternalServerError;
                _retryAfterSeconds = request.RetryAfterSeconds;
            }
            return new(_down, _failNext, _status, _retryAfterSeconds);
        }
    }

    public PortBehaviorState Reset() => Apply(new(Down: false, FailNext: 0));

    public PortBehaviorState Current()
    {
        lock (_gate)
        {
            return new(_down, _failNext, _status, _retryAfterSeconds);
        }
    }

    /// <summary>The injected failure for this call, or null when the call goes through.</summary>
    public PortAnswer? Next()
    {
        lock (_gate)
        {
            if (_down)
            {
                return PortAnswer.Failure(StatusCodes.Status503ServiceUnavailable, "service_unavailable", "Port is down (emulated).");
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
