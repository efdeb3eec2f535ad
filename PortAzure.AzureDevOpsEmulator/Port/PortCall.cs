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

/// <summary>The Port API calls (the newest <see cref="EmulatorOptions.MaxRecorded"/>), thread-safe, in arrival order.</summary>
internal sealed class PortCallRecorder(RecordedLog<PortCall> log)
{
    private long _sequence;

    public long NextSequence() => Interlocked.Increment(ref _sequence);

    public void Add(PortCall call) => log.Add(call);

    public IReadOnlyList<PortCall> Snapshot() => [.. log.Snapshot().OrderBy(c => c.Sequence)];

    /// <summary>Every recorded call, in arrival order, removed in the same step (<see cref="RecordedLog{T}.Take"/>).</summary>
    public IReadOnlyList<PortCall> Take() => [.. log.Take().OrderBy(c => c.Sequence)];

    public void Clear() => log.Clear();
}
