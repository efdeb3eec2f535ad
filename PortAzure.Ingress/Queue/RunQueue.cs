using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Ingress.Queue;

/// <summary>
/// The outcome of offering an accepted run to the stream. <paramref name="Written"/>: false only for a duplicate whose
/// rewrite (asked for by a caller that will <c>WAIT</c>) Redis refused, on a full Redis or a read-only one.
/// </summary>
internal readonly record struct EnqueueResult(bool Accepted, string DeliveryId, bool Written = true);

/// <summary>
/// A second key that must also be free: it names the signed call itself, so that replaying the call to another
/// target, or with other values of the unsigned Idempotency-Key header, finds it taken.
/// </summary>
internal readonly record struct ReplayGuard(string Key, TimeSpan Lifetime);

/// <summary>
/// Appends accepted runs to the stream. De-duplication, the XADD, the delivery record and the
/// wake-up message happen in one Lua script: one round trip, and no state where the key is
/// taken but the entry is missing (or the reverse).
/// </summary>
internal sealed class RunQueue(IConnectionMultiplexer redis)
{
    // KEYS: 1 idempotency key, 2 stream, 3 delivery record, 4 run index
    //       (a placeholder in the same slot when there is no run id: Redis Cluster refuses keys in two slots),
    //       5 the replay guard's key, only when there is one
    // ARGV: 1 delivery id, 2 idempotency TTL (s), 3 wake channel, 4 flags, summed (1: has a run id, 2: a duplicate
    //       rewrites the key it found; one argument for both, for the cost below), 5 received at (Unix ms),
    //       6 the replay guard's TTL (s) or 0, 7.. the stream entry's field/value pairs, id and body first (DeliveryEntry.ToStreamFields)
    // Why this shape: every argument costs Redis a Lua string, and this script is most of Redis's work per run.
    // The record shares the entry's field names, so it is the pairs after id and body (ARGV[11..]) plus its
    // own four fields; sending them a second time cost Redis ~4 µs per run (docs/benchmarks.md).
    // The guard (KEYS[5]) answers like the key it guards: a replay is a duplicate of the run it repeats.
    // GET before the first write: a failed XADD must not leave the key taken (a retry would be a "duplicate"). The
    // guard is the exception, taken with SET NX before the XADD: a GET first would cost every run one more command
    // (every Port run takes a guard). At maxmemory that SET is the command Redis refuses, with nothing written (it
    // refuses a command that may add memory, flagged denyoom, only while the script has written nothing, whether or
    // not this one would add any); once the SET has run the script finishes, so the XADD cannot fail for memory.
    // Asked to (flag 2: Ingress:WaitForReplicas), a duplicate rewrites the key it found, value and expiry kept: a
    // write on this connection, so that the WAIT after it covers the run's own write, made earlier and perhaps over
    // another connection. Redis 7.2 and later count only a connection's replicated writes for its WAIT; 7.0 counts any
    // command. The third value says whether that write was made (a full or read-only Redis refuses it: the answer
    // stands, but nothing can be confirmed). Not by default: a replayed call would otherwise write each time.
    private const string EnqueueScript = $$"""
        local function duplicate(key, deliveryId)
          if tonumber(ARGV[4]) < 2 then return {0, deliveryId} end
          local touched = redis.pcall('SET', key, deliveryId, 'KEEPTTL')
          return {0, deliveryId, touched.err and 0 or 1}
        end
        local existing = redis.call('GET', KEYS[1])
        if existing then
          -- A duplicate still takes its guard: else this call, answered "duplicate" here, could be replayed to
          -- another target (or under another header value) and be queued there. pcall: the answer stands without it.
          if KEYS[5] then redis.pcall('SET', KEYS[5], existing, 'NX', 'EX', ARGV[6]) end
          return duplicate(KEYS[1], existing)
        end
        if KEYS[5] and not redis.call('SET', KEYS[5], ARGV[1], 'NX', 'EX', ARGV[6]) then
          return duplicate(KEYS[5], redis.call('GET', KEYS[5]))
        end
        local streamId = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 7))
        if type(streamId) == 'table' and streamId.err then
          -- Not queued (a damaged stream key): the guard must not make a retry of this call a "duplicate" of nothing.
          if KEYS[5] then redis.call('DEL', KEYS[5]) end
          return streamId
        end
        redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
        redis.call('HSET', KEYS[3], '{{DeliveryRecord.StreamId}}', streamId, '{{DeliveryRecord.State}}', '{{DeliveryStates.Queued}}',
          '{{DeliveryRecord.UpdatedAt}}', ARGV[5], '{{DeliveryRecord.Attempts}}', '0', unpack(ARGV, 11))
        if tonumber(ARGV[4]) % 2 == 1 then
          -- The Dispatcher keeps the index as long as the records it finds (longer than this window; without expiry while
          -- one is a dead letter): another run of the same run id (another webhook, or after the window) must not cut that
          -- short. Not EXPIRE's GT, which Redis 6.2 lacks.
          -- pcall, as the Dispatcher's finish: the run is queued by now, and an index key of another type (damaged) failed
          -- the script here, which answered Port "nothing was accepted" for a run that was delivered. The lookup by run id
          -- then misses it; the delivery id in the answer still finds it.
          local ttl = redis.pcall('TTL', KEYS[4])
          redis.pcall('SADD', KEYS[4], ARGV[1])
          if ttl == -2 or (ttl >= 0 and ttl < tonumber(ARGV[2])) then
            redis.pcall('EXPIRE', KEYS[4], ARGV[2])
          end
        end
        redis.call('PUBLISH', ARGV[3], streamId)
        return {1, ARGV[1]}
        """;

    /// <param name="rewriteDuplicate">A duplicate rewrites the key it found, for a <c>WAIT</c> after it to cover the run.</param>
    public async Task<EnqueueResult> EnqueueAsync(DeliveryEntry entry, TimeSpan idempotencyWindow, ReplayGuard? replayGuard = null, bool rewriteDuplicate = false)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var args = ScriptArguments.WithFields(entry.ToStreamFields(),
            entry.DeliveryId,
            (long)idempotencyWindow.TotalSeconds,
            RedisKeys.WakeChannel,
            (entry.RunId is null ? 0 : 1) + (rewriteDuplicate ? 2 : 0),
            entry.ReceivedAt.ToUnixTimeMilliseconds(),
            replayGuard is { } guard ? Math.Max(1, (long)guard.Lifetime.TotalSeconds) : 0);
        var keys = new RedisKey[replayGuard is null ? 4 : 5];
        keys[0] = RedisKeys.Idempotency(entry.Org, entry.Webhook, entry.IdempotencyKey);
        keys[1] = RedisKeys.Stream;
        keys[2] = RedisKeys.Delivery(entry.DeliveryId);
        keys[3] = RedisKeys.RunIndex(entry.RunId ?? "");
        if (replayGuard is { } g)
        {
            keys[4] = g.Key;
        }
        var result = (RedisResult[])(await redis.GetDatabase().ScriptEvaluateAsync(EnqueueScript, keys, args))!;
        return new EnqueueResult((int)result[0] == 1, (string)result[1]!, result.Length < 3 || (int)result[2] == 1);
    }
}
