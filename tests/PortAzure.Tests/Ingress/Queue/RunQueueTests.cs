using PortAzure.Ingress.Queue;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress.Queue;

/// <summary>The enqueue script against a real Redis: what one accepted run leaves behind, and what a duplicate does not.</summary>
public class RunQueueTests
{
    private static readonly TimeSpan Window = TimeSpan.FromHours(24);

    private const string TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    private static DeliveryEntry NewEntry(string? runId, string? traceParent = TraceParent, string? traceState = null)
    {
        var key = runId ?? "sha256:" + Guid.NewGuid().ToString("N");
        return new DeliveryEntry("d_" + Guid.CreateVersion7().ToString("N"), TestRuns.Org, TestRuns.Webhook, TestRuns.Body(runId ?? "none"), key, runId,
            DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()), traceParent, traceState);
    }

    [Fact]
    public async Task EnqueueAsync_NewRun_AddsTheEntryAndItsRecordIndexAndKey()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
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
        Assert.Equal(entry.TraceState, record[DeliveryRecord.TraceState]);
        // The body travels in the stream entry only: the record keeps it only while a retry or a dead letter needs it.
        Assert.False(record.ContainsKey(DeliveryRecord.Body));

        var idempotencyKey = RedisKeys.Idempotency(entry.Org, entry.Webhook, entry.IdempotencyKey);
        Assert.Equal(entry.DeliveryId, (string?)await db.StringGetAsync(idempotencyKey));
        Assert.InRange((await db.KeyTimeToLiveAsync(idempotencyKey))!.Value, Window - TimeSpan.FromMinutes(1), Window);
        Assert.Equal([entry.DeliveryId], (await db.SetMembersAsync(RedisKeys.RunIndex(entry.RunId!))).Select(v => (string?)v));
        Assert.InRange((await db.KeyTimeToLiveAsync(RedisKeys.RunIndex(entry.RunId!)))!.Value, Window - TimeSpan.FromMinutes(1), Window);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(48)]
    [InlineData(1)]
    public async Task EnqueueAsync_RunIndexAlreadyKept_IsOnlyEverLengthened(int hoursKept)
    {
        // Kept for good while a delivery of the run is a dead letter (-1), for a delivered record's retention (48 h): a
        // second run of the run id (another webhook's) cut that to the idempotency window, and the lookup lost the dead letter.
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var runId = TestRuns.NewRunId();
        var index = RedisKeys.RunIndex(runId);
        await db.SetAddAsync(index, "d_earlier");
        if (hoursKept > 0)
        {
            await db.KeyExpireAsync(index, TimeSpan.FromHours(hoursKept));
        }

        var entry = NewEntry(runId) with { Webhook = "other-webhook" };
        Assert.True((await new RunQueue(redis).EnqueueAsync(entry, Window)).Accepted);

        Assert.Equal(new[] { "d_earlier", entry.DeliveryId }.Order(StringComparer.Ordinal), (await db.SetMembersAsync(index)).Select(v => (string)v!).Order(StringComparer.Ordinal));
        var ttl = await db.KeyTimeToLiveAsync(index);
        switch (hoursKept)
        {
            case -1:
                Assert.Null(ttl);
                break;
            case 48:
                Assert.InRange(ttl!.Value, TimeSpan.FromHours(47.9), TimeSpan.FromHours(48));
                break;
            default:
                Assert.InRange(ttl!.Value, Window - TimeSpan.FromMinutes(1), Window);
                break;
        }
    }

    [Fact]
    public async Task EnqueueAsync_RedisOutOfMemory_IsRefusedWithNothingWritten()
    {
        // The replay guard is the script's first write (SET NX): Redis refuses it, and with it the whole run, before
        // anything is written. Had a later write been refused, the guard would stay taken and a retry be a "duplicate".
        await using var server = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        var db = redis.GetDatabase();
        await RedisServer.FillAsync(db);
        var keysBefore = (long)await db.ExecuteAsync("DBSIZE");
        var entry = NewEntry(TestRuns.NewRunId());

        var refused = await Assert.ThrowsAsync<RedisServerException>(() =>
            new RunQueue(redis).EnqueueAsync(entry, Window, new ReplayGuard(RedisKeys.SignedCall("v1:test"), TimeSpan.FromMinutes(10))));

        Assert.Contains("OOM", refused.Message, StringComparison.Ordinal);
        Assert.Equal(keysBefore, (long)await db.ExecuteAsync("DBSIZE"));
    }

    [Fact]
    public async Task EnqueueAsync_StreamKeyDamaged_FailsAndLeavesNeitherGuardNorKey()
    {
        // The guard is taken before the XADD: a failed XADD must give it back, or a retry of the same signed call
        // would be answered "duplicate" of a run that was never queued.
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        await db.StringSetAsync(RedisKeys.Stream, "damaged");
        var entry = NewEntry(TestRuns.NewRunId());
        var guard = new ReplayGuard(RedisKeys.SignedCall("v1:" + Guid.NewGuid().ToString("N")), TimeSpan.FromMinutes(10));

        await Assert.ThrowsAsync<RedisServerException>(() => new RunQueue(redis).EnqueueAsync(entry, Window, guard));

        Assert.False(await db.KeyExistsAsync(guard.Key));
        Assert.False(await db.KeyExistsAsync(RedisKeys.Idempotency(entry.Org, entry.Webhook, entry.IdempotencyKey)));
    }

    [Fact]
    public async Task EnqueueAsync_RunIndexDamaged_QueuesTheRunWakesTheDispatchersAndLeavesTheIndexAsItWas()
    {
        // The index is written after the XADD, the key and the record: a failure there answered "nothing was accepted"
        // (Redis does not undo a script's earlier writes) for a run that stayed queued and was delivered.
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var entry = NewEntry(TestRuns.NewRunId());
        var index = RedisKeys.RunIndex(entry.RunId!);
        await db.StringSetAsync(index, "damaged");
        // Pub/sub spans the server's databases: other tests' wake-ups arrive here too.
        var woken = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var subscriber = redis.GetSubscriber();
        await subscriber.SubscribeAsync(RedisChannel.Literal(RedisKeys.WakeChannel), (_, message) => woken.Enqueue(message!));

        var result = await new RunQueue(redis).EnqueueAsync(entry, Window,
            new ReplayGuard(RedisKeys.SignedCall("v1:" + Guid.NewGuid().ToString("N")), TimeSpan.FromMinutes(10)));

        Assert.Equal(new EnqueueResult(true, entry.DeliveryId), result);
        var streamEntry = Assert.Single(await db.StreamRangeAsync(RedisKeys.Stream));
        await Eventually.HoldsAsync(() => Task.FromResult(woken.Contains(streamEntry.Id.ToString())), TimeSpan.FromSeconds(10), "the Dispatchers woken");
        Assert.Equal(DeliveryStates.Queued, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Equal("damaged", (string?)await db.StringGetAsync(index));
        Assert.Null(await db.KeyTimeToLiveAsync(index));
        await subscriber.UnsubscribeAllAsync();
    }

    [Fact]
    public async Task EnqueueAsync_SameKeyAgain_ReturnsTheFirstDeliveryIdAndQueuesNothing()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
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

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task EnqueueAsync_Duplicate_RewritesTheKeyItFoundAsItWas(bool byGuard)
    {
        // A WAIT after a duplicate (Ingress:WaitForReplicas) must cover the run's own write, perhaps made over another
        // connection: Redis 7.2+ counts only the WAIT's connection's replicated writes, so the duplicate makes one.
        // A server of its own: its count of changes (rdb_changes_since_last_save) is what shows the write.
        await using var server = await RedisServer.StartAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        var db = redis.GetDatabase();
        var queue = new RunQueue(redis);
        var first = NewEntry(TestRuns.NewRunId());
        var guard = new ReplayGuard(RedisKeys.SignedCall("v1:" + Guid.NewGuid().ToString("N")), TimeSpan.FromMinutes(10));
        await queue.EnqueueAsync(first, Window, guard);
        // The same signed call under another key (found by its guard), or the same key again (found by it).
        var second = byGuard
            ? NewEntry(TestRuns.NewRunId())
            : first with { DeliveryId = "d_" + Guid.CreateVersion7().ToString("N") };
        var found = byGuard ? guard.Key : RedisKeys.Idempotency(first.Org, first.Webhook, first.IdempotencyKey);
        var lifetime = byGuard ? guard.Lifetime : Window;
        var changes = await ChangesAsync(redis, server);

        var result = await queue.EnqueueAsync(second, Window, byGuard ? guard : null, rewriteDuplicate: true);

        Assert.Equal(new EnqueueResult(false, first.DeliveryId, Written: true), result);
        Assert.True(await ChangesAsync(redis, server) > changes, "the duplicate wrote nothing");
        Assert.Equal(first.DeliveryId, (string?)await db.StringGetAsync(found));
        var kept = await db.KeyTimeToLiveAsync(found);
        Assert.True(kept.HasValue, "the rewrite dropped the key's expiry");
        Assert.InRange(kept.Value, lifetime - TimeSpan.FromMinutes(1), lifetime);
        Assert.Equal(1, await db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task EnqueueAsync_DuplicateNotAskedToRewrite_WritesNothing()
    {
        // Without Ingress:WaitForReplicas a repeated call (a replayed signed call among them) costs Redis no write.
        await using var server = await RedisServer.StartAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        var queue = new RunQueue(redis);
        var first = NewEntry(TestRuns.NewRunId());
        await queue.EnqueueAsync(first, Window);
        var changes = await ChangesAsync(redis, server);

        var result = await queue.EnqueueAsync(first with { DeliveryId = "d_" + Guid.CreateVersion7().ToString("N") }, Window);

        Assert.Equal(new EnqueueResult(false, first.DeliveryId), result);
        Assert.Equal(changes, await ChangesAsync(redis, server));
    }

    [Fact]
    public async Task EnqueueAsync_DuplicateOnAFullRedis_AnswersDuplicateAndSaysNothingWasWritten()
    {
        await using var server = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        var queue = new RunQueue(redis);
        var first = NewEntry(TestRuns.NewRunId());
        await queue.EnqueueAsync(first, Window);
        await RedisServer.FillAsync(redis.GetDatabase());

        var result = await queue.EnqueueAsync(first with { DeliveryId = "d_" + Guid.CreateVersion7().ToString("N") }, Window,
            new ReplayGuard(RedisKeys.SignedCall("v1:" + Guid.NewGuid().ToString("N")), TimeSpan.FromMinutes(10)), rewriteDuplicate: true);

        Assert.Equal(new EnqueueResult(false, first.DeliveryId, Written: false), result);
    }

    private static async Task<long> ChangesAsync(ConnectionMultiplexer redis, RedisServer server) =>
        long.Parse((await RedisServer.InfoFieldAsync(redis, server.Port, "persistence", "rdb_changes_since_last_save"))!,
            System.Globalization.CultureInfo.InvariantCulture);

    [Fact]
    public async Task EnqueueAsync_NoRunIdNoTraceContext_AddsNoRunIndexAndOnlyTheFieldsItHas()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var entry = NewEntry(runId: null, traceParent: null);

        Assert.True((await new RunQueue(redis).EnqueueAsync(entry, Window)).Accepted);

        var read = DeliveryEntry.FromStreamEntry(Assert.Single(await db.StreamRangeAsync(RedisKeys.Stream)))!;
        Assert.Null(read.RunId);
        Assert.Null(read.TraceParent);
        var record = await db.HashGetAllAsync(RedisKeys.Delivery(entry.DeliveryId));
        string[] expected = [DeliveryRecord.Attempts, DeliveryRecord.IdempotencyKey, DeliveryRecord.Org, DeliveryRecord.ReceivedAt,
            DeliveryRecord.State, DeliveryRecord.StreamId, DeliveryRecord.UpdatedAt, DeliveryRecord.Webhook];
        Assert.Equal(expected.Order(StringComparer.Ordinal), record.Select(e => (string)e.Name!).Order(StringComparer.Ordinal));
        // The script's fourth key is this placeholder when there is no run id; it must stay unwritten.
        Assert.False(await db.KeyExistsAsync(RedisKeys.RunIndex("")));
    }

    [Fact]
    public async Task EnqueueAsync_NewRun_PublishesTheStreamIdOnTheWakeChannel()
    {
        // A server of its own: channels are server-wide, and another test's stream could get the same id.
        await using var server = await RedisServer.StartAsync();
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        var messages = new System.Collections.Concurrent.ConcurrentQueue<string>();
        await redis.GetSubscriber().SubscribeAsync(RedisChannel.Literal(RedisKeys.WakeChannel), (_, message) => messages.Enqueue(message!));

        await new RunQueue(redis).EnqueueAsync(NewEntry(TestRuns.NewRunId()), Window);

        var streamId = (string)Assert.Single(await redis.GetDatabase().StreamRangeAsync(RedisKeys.Stream)).Id!;
        await Eventually.HoldsAsync(() => Task.FromResult(messages.Contains(streamId)), TimeSpan.FromSeconds(10), "the stream id published on the wake channel");
    }
}
