namespace PortAzure.AzureDevOpsEmulator.Webhooks;

/// <summary>The requests the webhook route received (the newest <see cref="EmulatorOptions.MaxRecorded"/>), thread-safe.</summary>
internal sealed class WebhookRecorder(RecordedLog<RecordedWebhookRequest> log)
{
    private long _sequence;

    public long NextSequence() => Interlocked.Increment(ref _sequence);

    public long Dropped => log.Dropped;

    public void Add(RecordedWebhookRequest request) => log.Add(request);

    /// <summary>The recorded requests in arrival order, optionally of one webhook only.</summary>
    /// <remarks>Sequence numbers are taken on arrival, records are added once the answer is decided: hence the sort.</remarks>
    public IReadOnlyList<RecordedWebhookRequest> Snapshot(string? webhook) =>
        [.. log.Snapshot().Where(r => webhook is null || IsFor(r, webhook)).OrderBy(r => r.Sequence)];

    public int Count(string? webhook) => webhook is null ? log.Count() : log.Count(r => IsFor(r, webhook));

    /// <summary>Every recorded request, in arrival order, removed in the same step (<see cref="RecordedLog{T}.Take"/>).</summary>
    public IReadOnlyList<RecordedWebhookRequest> Take() => [.. log.Take().OrderBy(r => r.Sequence)];

    public void Clear() => log.Clear();

    private static bool IsFor(RecordedWebhookRequest request, string webhook) =>
        string.Equals(request.Webhook, webhook, StringComparison.OrdinalIgnoreCase);
}
