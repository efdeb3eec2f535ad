using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>
/// One accepted run as it travels through the stream: the exact bytes Port sent, where they go,
/// and the W3C trace context of the request that accepted them.
/// </summary>
public sealed record DeliveryEntry(
    string DeliveryId,
    string Org,
    string Webhook,
    ReadOnlyMemory<byte> Body,
    string IdempotencyKey,
    string? RunId,
    DateTimeOffset ReceivedAt,
    string? TraceParent,
    string? TraceState,
    int Replays = 0)
{
    public static class Fields
    {
        public const string DeliveryId = "id";
        public const string Org = "org";
        public const string Webhook = "webhook";
        public const string Body = "body";
        public const string IdempotencyKey = "key";
        public const string RunId = "run";
        public const string ReceivedAt = "at";
        public const string TraceParent = "traceparent";
        public const string TraceState = "tracestate";
        /// <summary>How many times an operator has replayed the run (the record's count; a replayed stream entry's copy).</summary>
        public const string Replays = "replays";
    }

    /// <summary>The target as the pause state and failure counts know it: one spelling, as Azure and the target list take any case.</summary>
    public string Target => RedisKeys.Target(Org, Webhook);

    /// <summary>
    /// The entry's stream fields, id and body first: the Ingress's enqueue script copies the fields after
    /// those two into the delivery record, whose field names are the same.
    /// </summary>
    public NameValueEntry[] ToStreamFields()
    {
        var fields = new List<NameValueEntry>(9)
        {
            new(Fields.DeliveryId, DeliveryId),
            new(Fields.Body, Body),
            new(Fields.Org, Org),
            new(Fields.Webhook, Webhook),
            new(Fields.IdempotencyKey, IdempotencyKey),
            new(Fields.ReceivedAt, ReceivedAt.ToUnixTimeMilliseconds()),
        };
        if (RunId is not null)
        {
            fields.Add(new(Fields.RunId, RunId));
        }
        if (TraceParent is not null)
        {
            fields.Add(new(Fields.TraceParent, TraceParent));
        }
        if (!string.IsNullOrEmpty(TraceState))
        {
            fields.Add(new(Fields.TraceState, TraceState));
        }
        if (Replays > 0)
        {
            fields.Add(new(Fields.Replays, Replays));
        }
        return [.. fields];
    }

    /// <summary>Reads an entry from stream fields or from a delivery record's hash fields.</summary>
    /// <returns><see langword="null"/> when a required field is missing (a foreign or damaged entry).</returns>
    public static DeliveryEntry? FromFields(IEnumerable<KeyValuePair<RedisValue, RedisValue>> fields)
    {
        ArgumentNullException.ThrowIfNull(fields);
        string? id = null, org = null, webhook = null, key = null, run = null, tp = null, ts = null;
        byte[]? body = null;
        long at = 0;
        var replays = 0;
        foreach (var (name, value) in fields)
        {
            switch ((string?)name)
            {
                case Fields.DeliveryId: id = value; break;
                case Fields.Org: org = value; break;
                case Fields.Webhook: webhook = value; break;
                case Fields.Body: body = value; break;
                case Fields.IdempotencyKey: key = value; break;
                case Fields.RunId: run = value; break;
                case Fields.ReceivedAt:
                    // Out of DateTimeOffset's range is as damaged as not a number: FromUnixTimeMilliseconds would throw.
                    if (!value.TryParse(out at) || at < DateTimeOffset.MinValue.ToUnixTimeMilliseconds() || at > DateTimeOffset.MaxValue.ToUnixTimeMilliseconds())
                    {
                        return null;
                    }
                    break;
                case Fields.TraceParent: tp = value; break;
                case Fields.TraceState: ts = value; break;
                // Only shown on the attempts' spans: a count that cannot be read is none, not a damaged entry.
                case Fields.Replays: replays = value.TryParse(out int n) && n > 0 ? n : 0; break;
                default: break;
            }
        }
        if (id is null || org is null || webhook is null || body is null || key is null)
        {
            return null;
        }
        return new DeliveryEntry(id, org, webhook, body, key, string.IsNullOrEmpty(run) ? null : run,
            DateTimeOffset.FromUnixTimeMilliseconds(at), tp, ts, replays);
    }

    public static DeliveryEntry? FromStreamEntry(StreamEntry entry) =>
        entry.IsNull ? null : FromFields(entry.Values.Select(v => new KeyValuePair<RedisValue, RedisValue>(v.Name, v.Value)));
}
