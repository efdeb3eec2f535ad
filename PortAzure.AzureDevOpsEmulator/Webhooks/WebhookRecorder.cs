namespace PortAzure.AzureDevOpsEmulator.Webhooks;

/// <summary>Every request the webhook route received, thread-safe.</summary>
internal sealed class WebhookRecorder
{
    private readonly Lock _gate = new();
    private readonly List<RecordedWebhookRequest> _requests = [];
    private long _sequence;

    public long NextSequence() => Interlocked.Increment(ref _sequence);

    public void Add(RecordedWebhookRequest request)
    {
        lock (_gate)
        {
            _requests.Add(request);
        }
    }

    /// <summary>The recorded requests in arrival order, optionally of one webhook only.</summary>
    public IReadOnlyList<RecordedWebhookRequest> Snapshot(string? webhook)
    {
        RecordedWebhookRequest[] copy;
        lock (_gate)
        {
            copy = [.. _requests];
        }

        // Sequence numbers are taken on arrival, records are added once the answer is decided.
        return [.. copy
            .Where(r => webhook is null || string.Equals(r.Webhook, webhook, StringComparison.OrdinalIgnoreCase))
            .OrderBy(r => r.Sequence)];
    }

    public int Count(string? webhook)
    {
        lock (_gate)
        {
            return webhook is null
                ? _requests.Count
                : _requests.Count(r => string.Equals(r.Webhook, webhook, StringComparison.OrdinalIgnoreCase));
        }
    }

    /// <summary>
    /// Every recorded request, in arrival order, removed in the same step: a request recorded while the caller reads
    /// stays for its next take, where a read and then a clear would drop it unseen.
    /// </summary>
    public IReadOnlyList<RecordedWebhookRequest> Take()
    {
        RecordedWebhookRequest[] taken;
        lock (_gate)
        {
            taken = [.. _requests];
            _requests.Clear();
        }
        return [.. taken.OrderBy(r => r.Sequence)];
    }

    public void Clear()
    {
        lock (_gate)
        {
            _requests.Clear();
        }
    }
}
