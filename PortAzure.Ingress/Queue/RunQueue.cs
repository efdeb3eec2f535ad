using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Ingress.Queue;

/// <summary>The outcome of offering an accepted run to the stream.</summary>
internal readonly record struct EnqueueResult(bool Accepted, string DeliveryId);

/// <summary>
/// Appends accepted runs to the stream. De-duplication, the XADD, the delivery record and the
/// wake-up message happen in one Lua script: one round trip, and no state where the key is
/// taken but the entry is missing (or the reverse).
/// </summary>
internal sealed class RunQueue(IConnectionMultiplexer redis)
{
    // KEYS: 1 idempotency key, 2 stream, 3 delivery record, 4 run index
    //       (a placeholder in the same slot when there is no run id: Redis Cluster refuses keys in two slots)
    // ARGV: 1 delivery id, 2 idempotency TTL (s), 3 wake channel, 4 number of stream field args,
    //       5 has run id (1/0), 6.. stream field/value pairs, then delivery record field/value pairs
    private const string EnqueueScript = """
        local existing = redis.call('GET', KEYS[1])
        if existing then
          return {0, existing}
        end
        local n = tonumber(ARGV[4])
        local fields = {}
        for i = 6, 5 + n do fields[#fields + 1] = ARGV[i] end
        local streamId = redis.call('XADD', KEYS[2], '*', unpack(fields))
        redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
        local record = {'streamId', streamId}
        for i = 6 + n, #ARGV do record[#record + 1] = ARGV[i] end
        redis.call('HSET', KEYS[3], unpack(record))
        if ARGV[5] == '1' then
          redis.call('SADD', KEYS[4], ARGV[1])
          redis.call('EXPIRE', KEYS[4], ARGV[2])
        end
        redis.call('PUBLISH', ARGV[3], streamId)
        return {1, ARGV[1]}
        """;

    public async Task<EnqueueResult> EnqueueAsync(DeliveryEntry entry, TimeSpan idempotencyWindow)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var streamFields = entry.ToStreamFields();
        var record = new NameValueEntry[]
        {
            new(DeliveryRecord.State, DeliveryStates.Queued),
            new(DeliveryRecord.Org, entry.Org),
            new(DeliveryRecord.Webhook, entry.Webhook),
            new(DeliveryRecord.RunId, entry.RunId ?? ""),
            new(DeliveryRecord.IdempotencyKey, entry.IdempotencyKey),
            new(DeliveryRecord.ReceivedAt, entry.ReceivedAt.ToUnixTimeMilliseconds()),
            new(DeliveryRecord.UpdatedAt, entry.ReceivedAt.ToUnixTimeMilliseconds()),
            new(DeliveryRecord.Attempts, 0),
            new(DeliveryRecord.TraceParent, entry.TraceParent ?? ""),
        };
        var args = new RedisValue[5 + (streamFields.Length * 2) + (record.Length * 2)];
        args[0] = entry.DeliveryId;
        args[1] = (long)idempotencyWindow.TotalSeconds;
        args[2] = RedisKeys.WakeChannel;
        args[3] = streamFields.Length * 2;
        args[4] = entry.RunId is null ? 0 : 1;
        var i = 5;
        foreach (var field in streamFields.Concat(record))
        {
            args[i++] = field.Name;
            args[i++] = field.Value;
        }
        RedisKey[] keys =
        [
            RedisKeys.Idempotency(entry.Org, entry.Webhook, entry.IdempotencyKey),
            RedisKeys.Stream,
            RedisKeys.Delivery(entry.DeliveryId),
            RedisKeys.RunIndex(entry.RunId ?? ""),
        ];
        var result = (RedisResult[])(await redis.GetDatabase().ScriptEvaluateAsync(EnqueueScript, keys, args))!;
        return new EnqueueResult((int)result[0] == 1, (string)result[1]!);
    }
}
