using System.Globalization;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>Whether Redis is over its <c>maxmemory</c>: the state in which it refuses writes (with <c>noeviction</c>).</summary>
internal static class RedisMemory
{
    /// <returns>Null when Redis could not be asked (away, or <c>INFO</c> not allowed to this user).</returns>
    public static async Task<bool?> IsFullAsync(IDatabase db)
    {
        ArgumentNullException.ThrowIfNull(db);
        try
        {
            return IsFull((string?)await db.ExecuteAsync("INFO", "memory"));
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException)
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
