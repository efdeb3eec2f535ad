using System.Globalization;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>Whether Redis is over its <c>maxmemory</c>: the state in which it refuses writes (with <c>noeviction</c>).</summary>
internal static class RedisMemory
{
    /// <summary>
    /// Asks the node that holds the relay's keys (on Redis Cluster, the primary of their one slot; any other node's
    /// memory says nothing about the writes the relay makes).
    /// </summary>
    /// <returns>
    /// Null when it could not be told: Redis away, <c>INFO</c> refused (an ACL without it, a command map that disables
    /// it) or a reply without <c>maxmemory</c> (some managed Redis services hide it). A caller then knows nothing either
    /// way.
    /// </returns>
    public static async Task<bool?> IsFullAsync(IConnectionMultiplexer redis, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(redis);
        try
        {
            if (await redis.GetDatabase().IdentifyEndpointAsync(RedisKeys.Stream).WaitAsync(cancellationToken) is not { } node)
            {
                return null;
            }
            return IsFull((string?)await redis.GetServer(node).ExecuteAsync("INFO", "memory").WaitAsync(cancellationToken));
        }
        // RedisCommandException (a command the client was told not to send) is no RedisException.
        catch (Exception ex) when (RedisFailures.IsFailure(ex) || ex is RedisCommandException or ObjectDisposedException)
        {
            return null;
        }
    }

    /// <summary>
    /// Redis's own rule (evict.c, getMaxmemoryState): over the limit when the memory used, less what Redis does not count
    /// (replicas' output buffers, the AOF buffer), exceeds <c>maxmemory</c>; no limit when <c>maxmemory</c> is 0.
    /// </summary>
    /// <returns>Null when the reply lacks a field (not a Redis this was written for).</returns>
    internal static bool? IsFull(string? info)
    {
        long? used = null, max = null, notCounted = null;
        foreach (var line in (info ?? "").Split('\n'))
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon < 0 || !long.TryParse(line.AsSpan(colon + 1).TrimEnd('\r'), NumberStyles.None, CultureInfo.InvariantCulture, out var value))
            {
                continue;
            }
            switch (line[..colon])
            {
                case "used_memory":
                    used = value;
                    break;
                case "maxmemory":
                    max = value;
                    break;
                case "mem_not_counted_for_evict":
                    notCounted = value;
                    break;
            }
        }
        return used is null || max is null ? null : max > 0 && used - (notCounted ?? 0) > max;
    }
}
