using PortAzure.Ingress.Queue;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress.Queue;

/// <summary>The enqueue script against a real Redis: what one accepted run leaves behind, and what a duplicate does not.</summary>
public class RunQueueTests
{
    private static readonly TimeSpan Window = TimeSpan.FromHours(24);

    private static DeliveryEntry NewEntry(string? runId, string? traceState = null)
    {
        var key = runId ?? "sha256:" + Guid.NewGuid().ToString("N");
        return new DeliveryEntry("d_" + Guid.CreateVersion7().ToString("N"), TestRuns.Org, TestRuns.Webhook, TestRuns.Body(runId ?? "none"), key, runId,
            DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", traceState);
    }

    [Fact]
    public async Task EnqueueAsync_NewRun_AddsTheEntryAndItsRecordIndexAndKey()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString);
        var db = redis.GetDatabase();
        var entry = NewEntry(TestRuns.NewRunId(), traceState: "vendor=1");

        var result = await new RunQueue(redis).EnqueueAsync(entry, Window);

        Assert.Equal(new EnqueueResult(true, entry.DeliveryId), result);
        var streamEntry = Assert.Single(await db.StreamRangeAsync(RedisKeys.Stream));
        var read = DeliveryEntry.FromStreamEntry(streamEntry)!;
        Assert.Equal(entry with { Body = default }, read with { Body = default });
        Assert.Equal(entry.Body.ToArray(), read.Body.ToArray());

        var record = (await db.HashGetAllAsync(RedisKeys.Delivery(entry.DeliveryId))).ToDictionary(e => (string)e.Name!, e => (string?)e.Value);
        var receivedAt = entry.ReceivedAt.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal((string?)streamEntry.Id, record[DeliveryRecord.StreamId]);
        Assert.Equal(DeliveryStates.Queued, record[DeliveryRecord.State]);
        Assert.Equal(entry.Org, record[DeliveryRecord.Org]);
        Assert.Equal(entry.Webhook, record[DeliveryRecord.Webhook]);
        Assert.Equal(entry.RunId, record[DeliveryRecord.RunId]);
        Assert.Equal(entry.IdempotencyKey, record[DeliveryRecord.IdempotencyKey]);
        Assert.Equal(receivedAt, record[DeliveryRecord.ReceivedAt]);
        Assert.Equal(receivedAt, record[DeliveryRecord.UpdatedAt]);
        Assert.Equal("0", record[DeliveryRecord.Attempts]);
        Assert.Equal(entry.TraceParent, record[DeliveryRecord.TraceParent]);
        // The body travels in the stream entry only: the record keeps it only while a retry or a dead letter needs it.
        Assert.False(record.ContainsKey(DeliveryRecord.Body));

        var idempotencyKey = RedisKeys.Idempotency(entry.Org, entry.Webhook, entry.IdempotencyKey);
        Assert.Equal(entry.DeliveryId, (string?)await db.StringGetAsync(idempotencyKey));
        Assert.InRange((await db.KeyTimeToLiveAsync(idempotencyKey))!.Value, Window - TimeSpan.FromMinutes(1), Window);
        Assert.Equal([entry.DeliveryId], (await db.SetMembersAsync(RedisKeys.RunIndex(entry.RunId!))).Select(v => (string?)v));
        Assert.InRange((await db.KeyTimeToLiveAsync(RedisKeys.RunIndex(entry.RunId!)))!.Value, Window - TimeSpan.FromMinutes(1), Window);
    }

    [Fact]
    public async Task EnqueueAsync_SameKeyAgain_ReturnsTheFirstDeliveryIdAndWritesNothing()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString);
        var db = redis.GetDatabase();
        var queue = new RunQueue(redis);
        var first = NewEntry(TestRuns.NewRunId());
        var second = first with { DeliveryId = "d_" + Guid.CreateVersion7().ToString("N") };

        await queue.EnqueueAsync(first, Window);
        var result = await queue.EnqueueAsync(second, Window);

        Assert.Equal(new EnqueueResult(false, first.DeliveryId), result);
        Assert.Equal(1, await db.StreamLengthAsync(RedisKeys.Stream));
        Assert.False(await db.KeyExistsAsync(RedisKeys.Delivery(second.DeliveryId)));
        Assert.Equal([first.DeliveryId], (await db.SetMembersAsync(RedisKeys.RunIndex(first.RunId!))).Select(v => (string?)v));
    }

    [Fact]
    public async Task EnqueueAsync_NoRunId_AddsNoRunIndexAndNoRunField()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString);
        var db = redis.GetDatabase();
        var entry = NewEntry(runId: null);

        Assert.True((await new RunQueue(redis).EnqueueAsync(entry, Window)).Accepted);

        Assert.Null(DeliveryEntry.FromStreamEntry(Assert.Single(await db.StreamRangeAsync(RedisKeys.Stream)))!.RunId);
        Assert.True(string.IsNullOrEmpty(await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.RunId)));
        // The script's fourth key is this placeholder when there is no run id; it must stay unwritten.
        Assert.False(await db.KeyExistsAsync(RedisKeys.RunIndex("")));
    }

    [Fact]
    public async Task EnqueueAsync_NewRun_PublishesTheStreamIdOnTheWakeChannel()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString);
        // Channels are server-wide: tests in other databases publish on it too.
        var messages = new System.Collections.Concurrent.ConcurrentQueue<string>();
        await redis.GetSubscriber().SubscribeAsync(RedisChannel.Literal(RedisKeys.WakeChannel), (_, message) => messages.Enqueue(message!));

        await new RunQueue(redis).EnqueueAsync(NewEntry(TestRuns.NewRunId()), Window);

        var streamId = (string)Assert.Single(await redis.GetDatabase().StreamRangeAsync(RedisKeys.Stream)).Id!;
        await Eventually.HoldsAsync(() => Task.FromResult(messages.Contains(streamId)), TimeSpan.FromSeconds(10), "the stream id published on the wake channel");
    }
}
