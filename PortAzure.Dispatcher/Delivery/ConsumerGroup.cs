using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>Joining a stream's consumer group, as the delivery worker and the Port reporter both do.</summary>
internal static class ConsumerGroup
{
    // KEYS: 1 stream. ARGV: 1 group, 2 this consumer (kept), 3 idle ms. Returns how many were removed.
    // The check and the removal in one step: between a separate XINFO and DELCONSUMER a consumer could read an entry,
    // and removing it would drop that entry from the pending list, where nothing would ever reclaim it.
    private const string RemoveStaleScript = """
        local removed = 0
        for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
          local f = {}
          for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
          if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
            removed = removed + 1
          end
        end
        return removed
        """;

    /// <summary>
    /// Creates the group (and the stream) unless it exists; true when this call created it. From "0":
    /// entries added before any Dispatcher ran (or while the group was missing) are read too.
    /// </summary>
    public static async Task<bool> EnsureAsync(IDatabase db, RedisKey stream, string group)
    {
        ArgumentNullException.ThrowIfNull(db);
        try
        {
            await db.StreamCreateConsumerGroupAsync(stream, group, "0-0", createStream: true);
            return true;
        }
        catch (RedisServerException ex) when (ex.Message.StartsWith("BUSYGROUP", StringComparison.Ordinal))
        {
            return false;
        }
        catch (RedisServerException ex) when (RedisFailures.IsOutOfMemory(ex))
        {
            // A full Redis refuses XGROUP CREATE before it looks for the group. One that exists is joined all the same:
            // reading, claiming, acknowledging and removing need no memory, so a Dispatcher started during the spell
            // works as the running ones do (its Port reporter sends the reports queued, which frees memory).
            if (await ExistsAsync(db, stream, group))
            {
                return false;
            }
            throw;
        }
    }

    private static async Task<bool> ExistsAsync(IDatabase db, RedisKey stream, string group)
    {
        try
        {
            return (await db.StreamGroupInfoAsync(stream)).Any(g => g.Name == group);
        }
        // No stream ("ERR no such key"), or the question failed too: the refusal for memory is what the caller reports.
        catch (Exception ex) when (RedisFailures.IsFailure(ex))
        {
            return false;
        }
    }

    /// <summary>
    /// Up to <paramref name="max"/> entries pending for <paramref name="consumer"/> after <paramref name="after"/>, in
    /// order, passing over <paramref name="skip"/>: the history of its own pending list (XREADGROUP from an id), read in
    /// pages. Their owner stays; Redis resets their idle time and counts one more delivery. An entry deleted while
    /// pending comes back without its fields and is passed over: the reclaim drops it, or says it is lost.
    /// </summary>
    /// <returns>The entries, and the id of the last one when <paramref name="max"/> stopped the read (null: there were no more).</returns>
    public static async Task<(List<StreamEntry> Entries, RedisValue? StoppedAt)> ReadOwnPendingAsync(IDatabase db, RedisKey stream, string group,
        string consumer, RedisValue after, IReadOnlySet<string> skip, int max, int pageSize)
    {
        ArgumentNullException.ThrowIfNull(db);
        ArgumentNullException.ThrowIfNull(skip);
        var found = new List<StreamEntry>();
        while (true)
        {
            var page = await db.StreamReadGroupAsync(stream, group, consumer, after, pageSize);
            foreach (var entry in page)
            {
                if (entry.Values is { Length: > 0 } && !skip.Contains(entry.Id.ToString()))
                {
                    if (found.Count == max)
                    {
                        return (found, found.Count > 0 ? found[^1].Id : after);
                    }
                    found.Add(entry);
                }
            }
            if (page.Length < pageSize)
            {
                return (found, null);
            }
            after = page[^1].Id;
        }
    }

    /// <summary>
    /// Every process joins under a new consumer name, so the group would collect the names of stopped
    /// Dispatchers. A consumer with nothing pending, silent for longer than <paramref name="idle"/>, is gone:
    /// removed. One with pending entries is left alone; XAUTOCLAIM empties it first.
    /// </summary>
    public static async Task RemoveStaleConsumersAsync(IDatabase db, RedisKey stream, string group, string self, TimeSpan idle)
    {
        ArgumentNullException.ThrowIfNull(db);
        try
        {
            await db.ScriptEvaluateAsync(RemoveStaleScript, [stream], [group, self, (long)idle.TotalMilliseconds]);
        }
        catch (RedisServerException ex) when (RedisFailures.IsOutOfMemory(ex))
        {
            // Redis 6.2 flags every XGROUP subcommand as one that may use memory, and a full one refuses DELCONSUMER (7.0
            // does not). Thrown, it kept a Dispatcher started during the spell from joining its groups: the stale names
            // stay until a later start, and the group is joined all the same.
        }
    }
}
