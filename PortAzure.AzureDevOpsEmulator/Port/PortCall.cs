namespace PortAzure.AzureDevOpsEmulator.Port;

/// <summary>One Port API call, as <c>GET /_emulator/port/calls</c> shows it.</summary>
/// <param name="RunId">The run in the path, or null for the token call.</param>
/// <param name="Error">The <c>error</c> code answered, or null on success.</param>
internal sealed record PortCall(
    long Sequence,
    DateTimeOffset ReceivedAt,
    string Method,
    string Path,
    string? RunId,
    string BodyText,
    bool AuthorizationPresent,
    int StatusCode,
    string? Error);

/// <summary>Every Port API call, thread-safe, in arrival order.</summary>
internal sealed class PortCallRecorder
{
    private readonly Lock _gate = new();
    private readonly List<PortCall> _calls = [];
    private long _sequence;

    public long NextSequence() => Interlocked.Increment(ref _sequence);

    public void Add(PortCall call)
    {
        lock (_gate)
        {
            _calls.Add(call);
        }
    }

    public IReadOnlyList<PortCall> Snapshot()
    {
        lock (_gate)
        {
            return [.. _calls.OrderBy(c => c.Sequence)];
        }
    }

    public void Clear()
    {
        lock (_gate)
        {
            _calls.Clear();
        }
    }
}
