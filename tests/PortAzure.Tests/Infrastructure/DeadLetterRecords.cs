using System.Text.Json;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>Dead letters written straight into Redis, for the replay and discard tests.</summary>
public static class DeadLetterRecords
{
    /// <summary>A replayable dead letter to the test target: its record (with <paramref name="extra"/> fields) and its index entry.</summary>
    public static async Task AddAsync(IDatabase db, string id, double score, RedisValue body, params HashEntry[] extra)
    {
        ArgumentNullException.ThrowIfNull(db);
        await db.HashSetAsync(RedisKeys.Delivery(id),
        [
            new(DeliveryRecord.State, DeliveryStates.DeadLettered), new(DeliveryRecord.Org, TestRuns.Org), new(DeliveryRecord.Webhook, TestRuns.Webhook),
            new(DeliveryRecord.Body, body), new(DeliveryRecord.IdempotencyKey, id), .. extra,
        ]);
        await db.SortedSetAddAsync(RedisKeys.DeadLetters, id, score);
    }

    /// <summary>One entry of a delivery's attempt log, as the Dispatcher writes it.</summary>
    public static RedisValue Attempt(int attempt, int status = 500) =>
        JsonSerializer.Serialize(new { attempt, at = DateTimeOffset.UtcNow, status, outcome = "retry", durationMs = 3, excerpt = "", consumer = "c" });
}
