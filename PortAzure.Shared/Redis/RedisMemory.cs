using System.Globalization;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>Whether Redis is over its <c>maxmemory</c>: the state in which it refuses writes (with <c>noeviction</c>).</summary>
internal static class RedisMemory
{
    /// <summary>
    /// Asks the primary that holds the relay's keys (on Redis Cluster, that of their one slot; any other node's memory
    /// says nothing about the writes the relay makes, and a replica ignores <c>maxmemory</c>).
    /// </summary>
    /// <returns>
    /// Null when it could not be told: Redis away or failing over, <c>INFO</c> refused (an ACL without it, a command map
    /// that disables it, as the client's proxy modes do), or a reply without <c>maxmemory</c> (some managed Redis
    /// services hide it). A caller then knows nothing either way.
    /// </returns>
    public static async Task<bool?> IsFullAsync(IConnectionMultiplexer redis, CancellationToken cancellationToken = default) =>
        (await ReadAsync(redis, cancellationToken)).Full;

    /// <summary>As <see cref="IsFullAsync"/>, and why it could not be told when that will not pass by itself.</summary>
    /// <returns>
    /// <c>Blind</c>: why this relay cannot read Redis's memory at all (a setting to change, or a Redis that does not say);
    /// null when it was read, or when Redis was only away (its own check says so, and it passes).
    /// </returns>
    public static async Task<(bool? Full, string? Blind)> ReadAsync(IConnectionMultiplexer redis, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(redis);
        cancellationToken.ThrowIfCancellationRequested();
        string? info;
        try
        {
            // With no primary connected (a failover), the client throws rather than hand out a replica.
            var primary = redis.GetServer(RedisKeys.Stream, flags: CommandFlags.DemandMaster);
            info = (string?)await primary.ExecuteAsync("INFO", "memory").WaitAsync(cancellationToken);
        }
        // Best effort: whatever stops the question leaves the answer unknown, and must not fail a health check or a
        // reclaim. A RedisCommandException (a command the client was told not to send, as behind an envoy or twemproxy
        // proxy) is no RedisException; a refusal by Redis (NOPERM) names no secret.
        catch (RedisCommandException)
        {
            return (null, "the Redis client does not send INFO: its command map leaves it out, as its proxy modes (proxy=envoyproxy, twemproxy) do");
        }
        // Refused for good (no permission, renamed away, a proxy or service that does not allow it), unless the refusal
        // is one that passes by itself.
        catch (RedisServerException ex) when (!RedisFailures.IsTransientRefusal(ex))
        {
            return (null, "Redis refused INFO (" + ex.Message + ")" + (ex.Message.StartsWith("NOPERM", StringComparison.Ordinal)
                ? ": grant +info to the relay's Redis user"
                : ex.Message.StartsWith("ERR unknown command", StringComparison.OrdinalIgnoreCase) ? ": rename-command took it away" : ""));
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return (null, RedisFailures.IsFailure(ex) || ex is ObjectDisposedException ? null : "INFO memory failed: " + ex.GetType().Name);
        }
        return IsFull(info) is { } full ? (full, null) : (null, "Redis's INFO memory reply does not give used_memory and maxmemory, as some managed Redis services do not");
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
