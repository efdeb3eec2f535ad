using System.Net;
using PortAzure.Dispatcher.Delivery;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The state transitions' Lua scripts against a real Redis, for the races a live test cannot time.</summary>
public class DeliveryStoreTests
{
    private static DeliveryEntry NewEntry() => new("d_" + Guid.NewGuid().ToString("N"), TestRuns.Org, TestRuns.Webhook,
        TestRuns.Body(TestRuns.NewRunId()), "k-" + Guid.NewGuid().ToString("N"), null, DateTimeOffset.UtcNow, null, null);

    private static DeliveryStore.FinishRequest Finish(FinishMode mode, DeliveryEntry entry, string token, params KeyValuePair<string, RedisValue>[] fields) =>
        new(mode, entry, null, token, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow.AddSeconds(30), TimeSpan.FromHours(1), null, 20,
            DateTimeOffset.UtcNow.AddSeconds(30), fields);

    /// <summary>Queues <paramref name="entry"/> in the stream and has a consumer read it (pending, as a Dispatcher holds it).</summary>
    /// <returns>Its stream id.</returns>
    private static async Task<string> QueueAndReadAsync(IDatabase db, DeliveryEntry entry)
    {
        await db.StreamCreateConsumerGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "0-0", createStream: true);
        var streamId = (await db.StreamAddAsync(RedisKeys.Stream, entry.ToStreamFields())).ToString();
        Assert.Single(await db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "dispatcher-a", ">", 1));
        return streamId;
    }

    /// <summary>An attempt that takes the lease now, for 30 s (a first attempt, not a reclaim).</summary>
    private static async Task BeginAsync(DeliveryStore store, DeliveryEntry entry, string token) =>
        Assert.True((await store.BeginAsync(entry, token, TimeSpan.FromSeconds(30), false, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30))).Leased);

    /// <summary>An attempt begun and recorded delivered.</summary>
    private static async Task DeliverAsync(DeliveryStore store, DeliveryEntry entry, string token)
    {
        await BeginAsync(store, entry, token);
        await store.FinishAsync(Finish(FinishMode.Delivered, entry, token, new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered)));
    }

    private static async Task DeadLetterAsync(DeliveryStore store, DeliveryEntry entry, string token)
    {
        await BeginAsync(store, entry, token);
        await store.FinishAsync(Finish(FinishMode.DeadLetter, entry, token,
            [.. PortAzure.Dispatcher.Delivery.DeliveryProcessor.EntryFields(entry, DeliveryStates.DeadLettered, DateTimeOffset.UtcNow)]));
    }

    /// <summary>A delivery with a run id, in its run index as the Ingress leaves it but with a minute left (a short window).</summary>
    private static async Task<(DeliveryEntry Entry, string Index)> IndexedEntryAsync(IDatabase db)
    {
        var entry = NewEntry() with { RunId = TestRuns.NewRunId() };
        var index = RedisKeys.RunIndex(entry.RunId!);
        await db.SetAddAsync(index, entry.DeliveryId);
        await db.KeyExpireAsync(index, TimeSpan.FromMinutes(1));
        return (entry, index);
    }

    /// <summary>A store on a leased database (or a redis-server of its own), and one delivery whose retry slot is due now.</summary>
    private sealed class DueSlot : IAsyncDisposable
    {
        private readonly List<IAsyncDisposable> _owned = [];

        public DeliveryStore Store { get; private set; } = null!;

        /// <summary>The database, not through any fault the store's calls meet.</summary>
        public IDatabase Db { get; private set; } = null!;

        public DeliveryEntry Entry { get; } = NewEntry();

        public DateTimeOffset Now { get; } = DateTimeOffset.UtcNow;

        public static async Task<DueSlot> StartAsync()
        {
            var redis = await SharedRedis.ConnectAsync();
            return await StartAsync(redis.Connection, redis.Connection, redis);
        }

        /// <summary>
        /// On a redis-server of its own, with <c>noeviction</c>, which <see cref="RedisServer.FillAsync"/> may put over
        /// <c>maxmemory</c>; the store's calls meet <paramref name="fault"/> when it is given.
        /// </summary>
        public static async Task<DueSlot> StartOwnAsync(Func<RedisCall, ScriptFault>? fault = null)
        {
            var server = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
            var connection = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
            return await StartAsync(connection, fault is null ? connection : FaultyRedis.FailCalls(connection, fault), connection, server);
        }

        private static async Task<DueSlot> StartAsync(ConnectionMultiplexer connection, IConnectionMultiplexer storeConnection, params IAsyncDisposable[] owned)
        {
            var slot = new DueSlot { Store = new DeliveryStore(storeConnection), Db = connection.GetDatabase() };
            slot._owned.AddRange(owned);
            await slot.Db.SortedSetAddAsync(RedisKeys.RetrySchedule, slot.Entry.DeliveryId, slot.Now.ToUnixTimeMilliseconds());
            return slot;
        }

        /// <summary>Claims the slot for 10 s, then, that claimer having crashed, again 11 s on: the second claim.</summary>
        public async Task<IReadOnlyList<(string DeliveryId, bool Reclaimed)>> ClaimAgainAfterACrashAsync()
        {
            await Store.ClaimDueRetriesAsync(Now, TimeSpan.FromSeconds(10), 10);
            return await Store.ClaimDueRetriesAsync(Now.AddSeconds(11), TimeSpan.FromSeconds(10), 10);
        }

        /// <summary>The slot is due now, and no claim of it is counted.</summary>
        public async Task AssertReleasedAsync()
        {
            Assert.Equal(Now.ToUnixTimeMilliseconds(), await Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, Entry.DeliveryId));
            Assert.False(await Db.HashExistsAsync(RedisKeys.RetryClaims, Entry.DeliveryId));
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var owned in _owned)
            {
                await owned.DisposeAsync();
            }
        }
    }

    [Fact]
    public void Target_AnySpellingOfOrgAndWebhook_IsOneTarget()
    {
        // The pause state and the failure counts are kept per target; Azure and the target list take any case.
        var entry = NewEntry() with { Org = "Contoso", Webhook = "Deploy" };

        Assert.Equal("contoso/deploy", entry.Target);
    }

    [Fact]
    public async Task Finish_MoreTriesThanTheLogKeeps_KeepsTheNewest()
    {
        // Tries that spend no attempt (a paused target's probes, 429s) are not bounded by MaxAttempts, and the operator API
        // reads the log whole.
        await using var leased = await SharedRedis.ConnectAsync();
        var store = new DeliveryStore(leased.Connection);
        var entry = NewEntry();
        var tries = (2 * DeliveryStore.MaxAttemptLog) + 5;

        for (var i = 1; i <= tries; i++)
        {
            Assert.True((await store.BeginAsync(entry, $"T{i}", TimeSpan.FromSeconds(30), false, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30))).Leased);
            await store.FinishAsync(Finish(FinishMode.Retry, entry, $"T{i}", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying))
                with { AttemptJson = $$"""{"attempt":{{i}}}""" });
        }

        var log = await leased.Connection.GetDatabase().ListRangeAsync(RedisKeys.Attempts(entry.DeliveryId));
        Assert.Equal(2 * DeliveryStore.MaxAttemptLog, log.Length);
        Assert.Equal($$"""{"attempt":{{tries}}}""", (string?)log[^1]);
        Assert.Equal("""{"attempt":6}""", (string?)log[0]);
    }

    [Fact]
    public async Task Finish_LateRetryAfterAnotherAttemptDelivered_DoesNotUndoTheDelivery()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var redis = leased.Connection;
        var store = new DeliveryStore(redis);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;

        // Attempt A takes the lease; it runs out while A waits; attempt B takes over and delivers.
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromMilliseconds(50), false, now, TimeSpan.FromSeconds(30))).Leased);
        await Task.Delay(100);
        Assert.True((await store.BeginAsync(entry, "B", TimeSpan.FromSeconds(30), false, now, TimeSpan.FromSeconds(30))).Leased);
        await store.FinishAsync(Finish(FinishMode.Delivered, entry, "B", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered)));

        // A's late result: a transient failure it would schedule for a retry.
        var result = await store.FinishAsync(Finish(FinishMode.Retry, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying)));

        var db = redis.GetDatabase();
        Assert.Equal(-1, result.Failures);
        Assert.Equal(DeliveryStates.Delivered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Equal(0, await db.SortedSetLengthAsync(RedisKeys.RetrySchedule));
    }

    [Theory]
    [InlineData(DeliveryStates.Retrying)]
    [InlineData(DeliveryStates.DeadLettered)]
    [InlineData(DeliveryStates.Delivered)]
    public async Task Finish_LeaseHolderAfterALateAttemptDelivered_DoesNotUndoTheDelivery(string state)
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        var report = new PortAzure.Dispatcher.PortReporting.PortReport("r_1", entry.DeliveryId, "delivered", "SUCCESS", "label");
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromMilliseconds(50), false, now, TimeSpan.FromSeconds(30))).Leased);
        await Task.Delay(100);
        Assert.True((await store.BeginAsync(entry, "B", TimeSpan.FromSeconds(30), false, now, TimeSpan.FromSeconds(30))).Leased);

        // A's lease ran out while it waited for Azure, but Azure accepted A's POST, and A records that first.
        await store.FinishAsync(Finish(FinishMode.Delivered, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered)) with { Report = report });
        // B still holds the lease; its own result must not turn the delivered run back into a retry, a dead letter or a second report.
        var mode = state switch
        {
            DeliveryStates.Retrying => FinishMode.Retry,
            DeliveryStates.DeadLettered => FinishMode.DeadLetter,
            _ => FinishMode.Delivered,
        };
        var result = await store.FinishAsync(Finish(mode, entry, "B", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, state)) with { Report = report });

        Assert.Equal(-1, result.Failures);
        Assert.Equal(DeliveryStates.Delivered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Equal(0, await db.SortedSetLengthAsync(RedisKeys.RetrySchedule));
        Assert.Equal(0, await db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.Single(await db.StreamRangeAsync(RedisKeys.PortReports));
        Assert.False(await db.KeyExistsAsync(RedisKeys.Lease(entry.DeliveryId)));
    }

    [Theory]
    [InlineData("attempt log", false)]
    [InlineData(RedisKeys.RetrySchedule, false)]
    [InlineData(RedisKeys.DeadLetters, true)]
    public async Task Finish_AWriteFailsMidScript_LeavesTheStreamEntryPendingAlsoWhenRunAgain(string damagedKey, bool deadLetter)
    {
        // Redis keeps a script's writes up to a failing command (here a damaged key, a string). The entry must not be
        // acknowledged with its dead letter or retry slot unwritten, neither by this run nor by the processor's next
        // run of the same finish, which must not find the attempt marked as finished (the mark of a lost reply).
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var streamId = await QueueAndReadAsync(db, entry);
        await db.StringSetAsync(damagedKey == "attempt log" ? RedisKeys.Attempts(entry.DeliveryId) : damagedKey, "damaged");
        await BeginAsync(store, entry, "A");
        var report = new PortAzure.Dispatcher.PortReporting.PortReport("r_1", entry.DeliveryId, "failed", "FAILURE", "label");
        var finish = Finish(deadLetter ? FinishMode.DeadLetter : FinishMode.Retry, entry, "A",
            new KeyValuePair<string, RedisValue>(DeliveryRecord.State, deadLetter ? DeliveryStates.DeadLettered : DeliveryStates.Retrying))
            with { StreamId = streamId, Report = report, AttemptJson = "{}" };

        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));
        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));

        Assert.Equal(1, await db.StreamLengthAsync(RedisKeys.Stream));
        Assert.Equal(1, (await db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount);
    }

    [Theory]
    [InlineData("dead letters")]
    [InlineData("attempt log")]
    public async Task Finish_RetryFromTheScheduleDeadLetteredFailsHalfWayTwice_StaysInTheSchedule(string damaged)
    {
        // A retry taken from the schedule that is dead-lettered: it leaves the schedule only once it is placed and recorded.
        // Damaged here: the dead-letter index, or its attempt log (written after the dead letter's place).
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry) = (slot.Store, slot.Db, slot.Entry);
        await db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Body, "kept");
        await db.StringSetAsync(damaged == "dead letters" ? RedisKeys.DeadLetters : RedisKeys.Attempts(entry.DeliveryId), "damaged");
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), true, slot.Now, TimeSpan.FromSeconds(30))).Leased);
        var finish = Finish(FinishMode.DeadLetter, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.DeadLettered))
            with { AttemptJson = "{}" };

        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));
        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));

        Assert.NotNull(await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
        Assert.NotEqual(DeliveryStates.DeadLettered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Equal("kept", (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Body));
    }

    [Theory]
    [InlineData("attempt log")]
    [InlineData("target failures")]
    [InlineData("paused targets")]
    [InlineData("dead letters")]
    [InlineData("retry claims")]
    public async Task Finish_DeliveredBesideADamagedKey_IsRecordedAcknowledgedAndReported(string damaged)
    {
        // A delivered run whose finish failed on a key beside its record (another type: damaged) stayed pending, and was
        // posted again at each reclaim, a pipeline run each time, until it was poison (MaxClaims, 5 by default). The
        // schedule is left whole here: a retry's slot must still be taken out (DueSlot).
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry) = (slot.Store, slot.Db, slot.Entry);
        var streamId = await QueueAndReadAsync(db, entry);
        var key = damaged switch
        {
            "attempt log" => RedisKeys.Attempts(entry.DeliveryId),
            "target failures" => RedisKeys.TargetFailures,
            "paused targets" => RedisKeys.PausedTargets,
            "retry claims" => RedisKeys.RetryClaims,
            _ => RedisKeys.DeadLetters,
        };
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), true, slot.Now, TimeSpan.FromSeconds(30))).Leased);
        // Damaged during the POST (the begin reads the pauses: damaged before it, nothing is posted at all).
        await db.StringSetAsync(key, "damaged");
        if (damaged == "dead letters")
        {
            // Dead-lettered meanwhile by an overlapping attempt, which this delivery outranks: it leaves the dead letters.
            await db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State, DeliveryStates.DeadLettered);
        }
        var report = new PortAzure.Dispatcher.PortReporting.PortReport("r_1", entry.DeliveryId, "delivered", "SUCCESS", "label");
        var finish = Finish(FinishMode.Delivered, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered))
            with { AttemptJson = "{}", StreamId = streamId, Report = report };

        var finished = await store.FinishAsync(finish);

        Assert.Null(finished.ReportError);
        Assert.Equal(DeliveryStates.Delivered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Null(await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
        Assert.Equal(0, await db.StreamLengthAsync(RedisKeys.Stream));
        Assert.Single(await db.StreamRangeAsync(RedisKeys.PortReports));
        Assert.Equal("damaged", (string?)await db.StringGetAsync(key));
    }

    [Theory]
    [InlineData(DeliveryRecord.Attempts, "damaged")]
    [InlineData(DeliveryRecord.Attempts, "nan")]
    [InlineData(DeliveryRecord.Attempts, "1e20")]
    [InlineData(DeliveryRecord.Attempts, "99999999999")]
    [InlineData(DeliveryRecord.Attempts, "2.5")]
    [InlineData(DeliveryRecord.Claims, "damaged")]
    [InlineData(DeliveryRecord.Claims, "99999999999")]
    [InlineData(DeliveryRecord.Since, "damaged")]
    [InlineData(DeliveryRecord.Since, "1e15")]
    [InlineData(DeliveryRecord.Since, "-inf")]
    public async Task Begin_DamagedCountOrTimeInTheRecord_TakesTheLeaseAndReadsItAsNone(string field, string value)
    {
        // Thrown after the lease was taken, a damaged field kept the attempt from its poison check: the entry was
        // reclaimed, failed again and came back, for good, never posted nor dead-lettered.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        await db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), [new(DeliveryRecord.Attempts, 3), new(DeliveryRecord.Claims, 2), new(DeliveryRecord.Since, 1000)]);
        await db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), field, value);

        var begin = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30));

        Assert.True(begin.Leased);
        Assert.Equal(field == DeliveryRecord.Attempts ? 0 : 3, begin.Attempts);
        Assert.Equal(field == DeliveryRecord.Claims ? 1 : 3, begin.Claims);
        Assert.Equal(field == DeliveryRecord.Since ? null : DateTimeOffset.FromUnixTimeMilliseconds(1000), begin.Since);
    }

    [Theory]
    [InlineData("damaged")]
    [InlineData("1e15")]
    [InlineData("99999999999999.5")]
    [InlineData("nan")]
    public async Task Begin_DamagedPauseTimeOfTheTarget_ProbesTheTargetAndPausesItAnew(string value)
    {
        // Compared as a number, a damaged pause time failed the begin of every delivery to that target.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        await db.HashSetAsync(RedisKeys.PausedTargets, entry.Target, value);

        var begin = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: false, now, TimeSpan.FromSeconds(30));

        Assert.True(begin.Leased);
        Assert.Null(begin.PausedUntil);
        Assert.Equal(now.AddSeconds(30).ToUnixTimeMilliseconds(), (long)await db.HashGetAsync(RedisKeys.PausedTargets, entry.Target));
    }

    [Fact]
    public async Task Begin_PauseHashOfAnotherType_TakesTheLeaseUnpausedAndLeavesTheKey()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        await db.StringSetAsync(RedisKeys.PausedTargets, "damaged");

        var begin = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30));

        Assert.True(begin.Leased);
        Assert.Null(begin.PausedUntil);
        Assert.Equal(1, begin.Claims);
        Assert.Equal("damaged", (string?)await db.StringGetAsync(RedisKeys.PausedTargets));
    }

    [Fact]
    public async Task Finish_RetryWithADamagedTargetFailureCount_IsRecordedAndCountsOne()
    {
        // A failing count made every retry finish to that target fail half-way, within its window and then for good:
        // the lease ran out and the run was posted again.
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry) = (slot.Store, slot.Db, slot.Entry);
        await db.HashSetAsync(RedisKeys.TargetFailures, entry.Target, "damaged");
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), true, slot.Now, TimeSpan.FromSeconds(30))).Leased);

        await store.FinishAsync(Finish(FinishMode.Retry, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying))
            with { AttemptJson = "{}" });

        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.TargetFailures, entry.Target));
        Assert.Equal(DeliveryStates.Retrying, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.NotNull(await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
    }

    [Fact]
    public async Task Finish_RetryRunAgainAfterItFailedHalfWay_CountsNoTargetFailure()
    {
        // Each run of a half-failed retry finish inside the finish window (up to ~30 of them) would otherwise count one
        // more failure of the target, and pause a healthy one.
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry) = (slot.Store, slot.Db, slot.Entry);
        await db.StringSetAsync(RedisKeys.Attempts(entry.DeliveryId), "damaged");
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), true, slot.Now, TimeSpan.FromSeconds(30))).Leased);
        var finish = Finish(FinishMode.Retry, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying))
            with { AttemptJson = "{}" };

        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));
        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));

        Assert.False(await db.HashExistsAsync(RedisKeys.TargetFailures, entry.Target));
        Assert.NotNull(await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Finish_LateDeliveryAfterAnotherAttemptDeadLettered_RecordsTheDelivery(bool discarded)
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromMilliseconds(50), false, now, TimeSpan.FromSeconds(30))).Leased);
        await Task.Delay(100);
        Assert.True((await store.BeginAsync(entry, "B", TimeSpan.FromSeconds(30), false, now, TimeSpan.FromSeconds(30))).Leased);
        await store.FinishAsync(Finish(FinishMode.DeadLetter, entry, "B", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.DeadLettered),
            new(DeliveryRecord.Reason, "permanent_failure"), new(DeliveryRecord.Hint, "Replay it once the cause is fixed."),
            new(DeliveryRecord.DeadLetteredAt, now.ToUnixTimeMilliseconds())));
        Assert.Equal(1, await db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        if (discarded)
        {
            // The operator's discard between changes nothing of it: "discarded" would hide a run that did start.
            Assert.True(await store.DiscardAsync(entry.DeliveryId, DateTimeOffset.UtcNow, TimeSpan.FromHours(1)));
        }

        // Azure accepted A's POST after all: the run was started, so a dead letter (and a replay) would be wrong.
        await store.FinishAsync(Finish(FinishMode.Delivered, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered)));

        Assert.Equal(DeliveryStates.Delivered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Equal(0, await db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        // Nor does the record still tell the operator to replay it.
        Assert.All(await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), [DeliveryRecord.Reason, DeliveryRecord.Hint, DeliveryRecord.DeadLetteredAt]),
            value => Assert.True(value.IsNull));
    }

    [Fact]
    public async Task Finish_RunAgainAfterItsReplyWasLost_IsNotAppliedTwice()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), false, now, TimeSpan.FromSeconds(30))).Leased);
        var retry = Finish(FinishMode.Retry, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying))
            with { AttemptJson = """{"attempt":1,"status":503}""" };

        var first = await store.FinishAsync(retry);
        // The same call again, as the processor's retry sends it when the first reply timed out.
        var second = await store.FinishAsync(retry);

        Assert.Equal(1, first.Failures);
        Assert.Equal(-1, second.Failures);
        Assert.Equal(1, await db.ListLengthAsync(RedisKeys.Attempts(entry.DeliveryId)));
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.TargetFailures, entry.Target));
        Assert.Equal(1, await db.SortedSetLengthAsync(RedisKeys.RetrySchedule));
    }

    [Fact]
    public async Task ClaimDueRetries_SlotClaimedAgainBeforeAnyFinish_IsReportedReclaimedUntilAnAttemptEnds()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, entry, now) = (slot.Store, slot.Entry, slot.Now);

        var first = await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(10), 10);
        // Not due again while the claim's lease runs.
        var during = await store.ClaimDueRetriesAsync(now.AddSeconds(9), TimeSpan.FromSeconds(10), 10);
        // The claimer never finished: the slot falls due after the lease and is claimed again.
        var again = await store.ClaimDueRetriesAsync(now.AddSeconds(11), TimeSpan.FromSeconds(10), 10);
        await store.FinishAsync(Finish(FinishMode.Retry, entry, "B", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying)));
        var afterFinish = await store.ClaimDueRetriesAsync(now.AddMinutes(5), TimeSpan.FromSeconds(10), 10);

        Assert.Equal([(entry.DeliveryId, false)], first);
        Assert.Empty(during);
        Assert.Equal([(entry.DeliveryId, true)], again);
        Assert.Equal([(entry.DeliveryId, false)], afterFinish);
    }

    [Fact]
    public async Task ClaimDueRetries_ReplyTimedOut_SlotDueAgainAtOnceAndNotCountedAsACrash()
    {
        // Its own server: the pause of Redis's writes that holds the claim would hold every other test's too.
        await using var server = await RedisServer.StartAsync();
        await using var control = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(server.ConnectionString.Replace("asyncTimeout=3000", "asyncTimeout=300",
            StringComparison.Ordinal));
        var store = new DeliveryStore(redis);
        var id = NewEntry().DeliveryId;
        var now = DateTimeOffset.UtcNow;
        await redis.GetDatabase().SortedSetAddAsync(RedisKeys.RetrySchedule, id, now.ToUnixTimeMilliseconds());

        // The claim script waits behind the pause until the client has given up on its reply; then it runs.
        await control.GetDatabase().ExecuteAsync("CLIENT", "PAUSE", "30000", "WRITE");
        try
        {
            await Assert.ThrowsAnyAsync<TimeoutException>(() => store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(30), 10));
        }
        finally
        {
            await control.GetDatabase().ExecuteAsync("CLIENT", "UNPAUSE");
        }
        // The lost claim and its release were sent on that connection before the pause ended: a PING answered on it comes
        // after both have run. Its 300 ms timeout is only for the lost claim; the next claim goes on the control connection
        // (3 s), as on the short one its reply after the pause missed 300 ms when the machine was loaded.
        await Eventually.HoldsAsync(async () =>
        {
            try
            {
                await redis.GetDatabase().PingAsync();
                return true;
            }
            catch (RedisTimeoutException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(20), "the lost claim and its release have run");
        // Long before the lost claim's 30 s would have run out.
        var again = await new DeliveryStore(control).ClaimDueRetriesAsync(now.AddSeconds(1), TimeSpan.FromSeconds(30), 10);

        Assert.Equal([(id, false)], again);
    }

    [Fact]
    public async Task ClaimDueRetries_DamagedClaimCount_IsResetAndEverySlotIsClaimed()
    {
        // A count that is not a number would fail every claim that reaches it, and the slots behind it with it.
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);
        var damaged = NewEntry().DeliveryId;
        await db.SortedSetAddAsync(RedisKeys.RetrySchedule, damaged, now.AddSeconds(-1).ToUnixTimeMilliseconds());
        await db.HashSetAsync(RedisKeys.RetryClaims, damaged, "not-a-number");

        var claimed = await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(30), 10);

        Assert.Equal([(damaged, false), (entry.DeliveryId, false)], claimed);
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.RetryClaims, damaged));
    }

    [Fact]
    public async Task ClaimDueRetries_ClaimsKeyOfAnotherType_ClaimsTheSlotAsAFirstClaimAndLeavesTheKey()
    {
        // The claim failed, and every read of the Dispatcher's loop with it (the due retries are claimed first).
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);
        await db.StringSetAsync(RedisKeys.RetryClaims, "damaged");

        var claimed = await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(30), 10);

        Assert.Equal([(entry.DeliveryId, false)], claimed);
        Assert.Equal(now.AddSeconds(30).ToUnixTimeMilliseconds(), await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
        Assert.Equal("damaged", (string?)await db.StringGetAsync(RedisKeys.RetryClaims));
    }

    [Fact]
    public async Task ReleaseRetryClaims_ClaimNeverStarted_DueAgainAtOnceAndNotCountedAsACrash()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, entry, now) = (slot.Store, slot.Entry, slot.Now);

        // The worker claimed the slot, then a Redis error stopped it before the attempt began.
        var first = await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(10), 10);
        await store.ReleaseRetryClaimsAsync([entry.DeliveryId], now);
        // Long before the claim's 10 s would have run out.
        var again = await store.ClaimDueRetriesAsync(now.AddSeconds(1), TimeSpan.FromSeconds(10), 10);

        Assert.Equal([(entry.DeliveryId, false)], first);
        Assert.Equal([(entry.DeliveryId, false)], again);
    }

    [Fact]
    public async Task ReleaseRetryClaims_AfterAnEarlierClaimCrashed_TheNextClaimStillReportsTheCrash()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);

        // The first claimer crashed; the second claim is undone before its attempt began (which would have counted the
        // crash in the record). Undone by deleting the slot's count, the crash was forgotten: poison one claim later.
        var second = await slot.ClaimAgainAfterACrashAsync();
        await store.ReleaseRetryClaimsAsync([entry.DeliveryId], now.AddSeconds(11));
        var third = await store.ClaimDueRetriesAsync(now.AddSeconds(12), TimeSpan.FromSeconds(10), 10);

        Assert.Equal([(entry.DeliveryId, true)], second);
        Assert.Equal([(entry.DeliveryId, true)], third);
        Assert.Equal(2, (long)await db.HashGetAsync(RedisKeys.RetryClaims, entry.DeliveryId));
    }

    [Fact]
    public async Task ReleaseRetryClaims_DamagedClaimCount_IsDeletedAndTheOtherSlotsAreStillReleased()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);
        var other = NewEntry().DeliveryId;
        await db.SortedSetAddAsync(RedisKeys.RetrySchedule, other, now.ToUnixTimeMilliseconds());
        await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(10), 10);
        await db.HashSetAsync(RedisKeys.RetryClaims, [new(entry.DeliveryId, "not-a-number"), new(other, 2)]);

        await store.ReleaseRetryClaimsAsync([entry.DeliveryId, other], now);

        Assert.False(await db.HashExistsAsync(RedisKeys.RetryClaims, entry.DeliveryId));
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.RetryClaims, other));
        Assert.Equal(now.ToUnixTimeMilliseconds(), await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
        Assert.Equal(now.ToUnixTimeMilliseconds(), await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, other));
    }

    // The releases below on a Redis that filled after the claim: Redis over maxmemory refuses their ZADD (denyoom) unless
    // the script has written before it, and a release refused left the slot to wait out its lease, its next claim counted as
    // a crash (poison after Dispatcher:MaxClaims of them).

    [Fact]
    public async Task ReleaseRetryClaims_RedisFilledAfterTheClaim_DueAgainAtOnceAndNotCountedAsACrash()
    {
        await using var slot = await DueSlot.StartOwnAsync();
        await slot.Store.ClaimDueRetriesAsync(slot.Now, TimeSpan.FromSeconds(10), 10);
        await RedisServer.FillAsync(slot.Db);

        await slot.Store.ReleaseRetryClaimsAsync([slot.Entry.DeliveryId], slot.Now);

        Assert.True(await RedisMemory.IsFullAsync(slot.Db.Multiplexer));
        await slot.AssertReleasedAsync();
    }

    [Fact]
    public async Task ReleaseRetryClaims_RedisFullAfterAnEarlierClaimCrashed_DueAgainAndTheCrashStillCounted()
    {
        await using var slot = await DueSlot.StartOwnAsync();
        await slot.ClaimAgainAfterACrashAsync();
        await RedisServer.FillAsync(slot.Db);

        await slot.Store.ReleaseRetryClaimsAsync([slot.Entry.DeliveryId], slot.Now.AddSeconds(11));

        Assert.True(await RedisMemory.IsFullAsync(slot.Db.Multiplexer));
        Assert.Equal(slot.Now.AddSeconds(11).ToUnixTimeMilliseconds(), await slot.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, slot.Entry.DeliveryId));
        Assert.Equal(1, (long)await slot.Db.HashGetAsync(RedisKeys.RetryClaims, slot.Entry.DeliveryId));
    }

    [Fact]
    public async Task ReleaseRetryClaims_RedisFullAndClaimsKeyDamaged_TheSlotIsStillDueAgain()
    {
        // The count's HDEL, refused for the wrong type, still counts as the script's first write: the ZADD goes through.
        await using var slot = await DueSlot.StartOwnAsync();
        await slot.Store.ClaimDueRetriesAsync(slot.Now, TimeSpan.FromSeconds(10), 10);
        await slot.Db.KeyDeleteAsync(RedisKeys.RetryClaims);
        await slot.Db.StringSetAsync(RedisKeys.RetryClaims, "damaged");
        await RedisServer.FillAsync(slot.Db);

        await slot.Store.ReleaseRetryClaimsAsync([slot.Entry.DeliveryId], slot.Now);

        Assert.True(await RedisMemory.IsFullAsync(slot.Db.Multiplexer));
        Assert.Equal(slot.Now.ToUnixTimeMilliseconds(), await slot.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, slot.Entry.DeliveryId));
    }

    [Fact]
    public async Task ReleaseUnfinishedBegin_RedisFilledAfterTheClaim_DueAgainAtOnceAndNotCountedAsACrash()
    {
        // The stop between two tries of a begin that Redis refused for memory: the case a full Redis makes common.
        await using var slot = await DueSlot.StartOwnAsync();
        await slot.Store.ClaimDueRetriesAsync(slot.Now, TimeSpan.FromSeconds(10), 10);
        await RedisServer.FillAsync(slot.Db);

        await slot.Store.ReleaseUnfinishedBeginAsync(slot.Entry.DeliveryId, "a-lease-never-taken", fromSchedule: true, slot.Now);

        Assert.True(await RedisMemory.IsFullAsync(slot.Db.Multiplexer));
        await slot.AssertReleasedAsync();
    }

    [Fact]
    public async Task ClaimDueRetries_ReplyLostAndRedisFullBeforeTheRelease_TheClaimIsStillUndone()
    {
        DueSlot? slot = null;
        slot = await DueSlot.StartOwnAsync(call =>
        {
            if (call.Script is not { } script)
            {
                return ScriptFault.None;
            }
            if (script.Contains("'RPUSH'", StringComparison.Ordinal))
            {
                return ScriptFault.ReplyLost;
            }
            if (script.Contains("'LRANGE'", StringComparison.Ordinal))
            {
                // Between the claim, which ran, and its release. Task.Run: off the test's synchronization context.
                Task.Run(() => RedisServer.FillAsync(slot!.Db)).GetAwaiter().GetResult();
            }
            return ScriptFault.None;
        });
        await using var _ = slot;

        await Assert.ThrowsAnyAsync<Exception>(() => slot.Store.ClaimDueRetriesAsync(slot.Now, TimeSpan.FromSeconds(10), 10));

        Assert.True(await RedisMemory.IsFullAsync(slot.Db.Multiplexer));
        await slot.AssertReleasedAsync();
        Assert.Empty((RedisResult[])(await slot.Db.ExecuteAsync("KEYS", RedisKeys.RetryClaimBatch("*")))!);
    }

    [Fact]
    public async Task RemoveFromSchedule_RedisFull_TheSlotAndItsCountGo()
    {
        await using var slot = await DueSlot.StartOwnAsync();
        await slot.Store.ClaimDueRetriesAsync(slot.Now, TimeSpan.FromSeconds(10), 10);
        await RedisServer.FillAsync(slot.Db);

        await slot.Store.RemoveFromScheduleAsync(slot.Entry.DeliveryId);

        Assert.True(await RedisMemory.IsFullAsync(slot.Db.Multiplexer));
        Assert.Null(await slot.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, slot.Entry.DeliveryId));
        Assert.False(await slot.Db.HashExistsAsync(RedisKeys.RetryClaims, slot.Entry.DeliveryId));
    }

    [Fact]
    public async Task ReleaseRetryClaims_SlotNoLongerScheduled_IsNotScheduledAgain()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);
        await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(10), 10);
        await store.RemoveFromScheduleAsync(entry.DeliveryId);

        await store.ReleaseRetryClaimsAsync([entry.DeliveryId], now);

        Assert.Null(await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
        Assert.False(await db.HashExistsAsync(RedisKeys.RetryClaims, entry.DeliveryId));
    }

    [Fact]
    public async Task ReleaseLease_AnotherAttemptsLease_LeavesTheLeaseTheClaimAndTheSlot()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);
        await store.ClaimDueRetriesAsync(now, TimeSpan.FromSeconds(10), 10);
        var claimedUntil = await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId);
        Assert.True((await store.BeginAsync(entry, "t", TimeSpan.FromSeconds(30), claimed: false, now, TimeSpan.FromSeconds(30))).Leased);

        // A late release of an attempt whose lease has since gone to this one (a stop after its lease ran out).
        await store.ReleaseLeaseAsync(entry.DeliveryId, "an-earlier-attempt", fromSchedule: true, now);

        Assert.Equal("t", (string?)await db.StringGetAsync(RedisKeys.Lease(entry.DeliveryId)));
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.RetryClaims, entry.DeliveryId));
        Assert.Equal(claimedUntil, await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, entry.DeliveryId));
    }

    [Fact]
    public async Task ReleaseUnfinishedBegin_ReclaimedRetryThatBegan_TheEarlierCrashIsCountedOnce()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);

        // The first claimer crashed; the second claim's begin took the lease and counted that crash in the record (its
        // reply lost, the stop came before the next try). Released in two calls (the lease, then the claim), a failure of
        // the first alone left the count above one, and the crash was counted a second time at the next claim.
        await slot.ClaimAgainAfterACrashAsync();
        Assert.Equal(1, (await store.BeginAsync(entry, "t", TimeSpan.FromSeconds(30), claimed: true, now.AddSeconds(11), TimeSpan.FromSeconds(30))).Claims);
        await store.ReleaseUnfinishedBeginAsync(entry.DeliveryId, "t", fromSchedule: true, now.AddSeconds(11));
        var next = await store.ClaimDueRetriesAsync(now.AddSeconds(12), TimeSpan.FromSeconds(10), 10);
        var begun = await store.BeginAsync(entry, "u", TimeSpan.FromSeconds(30), claimed: next.Single().Reclaimed, now.AddSeconds(12), TimeSpan.FromSeconds(30));

        Assert.Equal([(entry.DeliveryId, false)], next);
        Assert.True(begun.Leased);
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Claims));
    }

    [Fact]
    public async Task ReleaseUnfinishedBegin_ReclaimedRetryThatNeverBegan_TheNextClaimStillReportsTheCrash()
    {
        await using var slot = await DueSlot.StartAsync();
        var (store, db, entry, now) = (slot.Store, slot.Db, slot.Entry, slot.Now);

        // No try of the begin reached Redis: the lease is not this attempt's, and the crash is not counted in the record yet.
        await slot.ClaimAgainAfterACrashAsync();
        await store.ReleaseUnfinishedBeginAsync(entry.DeliveryId, "t", fromSchedule: true, now.AddSeconds(11));
        var next = await store.ClaimDueRetriesAsync(now.AddSeconds(11), TimeSpan.FromSeconds(10), 10);

        Assert.Equal([(entry.DeliveryId, true)], next);
        Assert.Equal(2, (long)await db.HashGetAsync(RedisKeys.RetryClaims, entry.DeliveryId));
    }

    [Fact]
    public async Task Finish_WithAPortReport_WritesItInTheSameStepOnlyWhenTheOutcomeIsRecorded()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var store = new DeliveryStore(redis);
        var entry = NewEntry();
        var report = new PortAzure.Dispatcher.PortReporting.PortReport("r_1", entry.DeliveryId, "delivered", "FAILURE", "label",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "port=run1");
        var delivered = new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered);
        Assert.True((await store.BeginAsync(entry, "A", TimeSpan.FromMilliseconds(50), false, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30))).Leased);
        await Task.Delay(100);
        await BeginAsync(store, entry, "B");

        await store.FinishAsync(Finish(FinishMode.Delivered, entry, "B", delivered) with { Report = report });
        // A's late result after B recorded the outcome: neither it nor its report is written.
        await store.FinishAsync(Finish(FinishMode.Delivered, entry, "A", delivered) with { Report = report });

        var written = Assert.Single(await db.StreamRangeAsync(RedisKeys.PortReports));
        Assert.Equal(report, PortAzure.Dispatcher.PortReporting.PortReport.FromStreamEntry(written));
        Assert.Equal(DeliveryStates.Delivered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
    }

    [Fact]
    public async Task Finish_PortReportsKeyDamaged_RecordsTheOutcomeAndSaysTheReportWasNotWritten()
    {
        // The report's XADD failed the whole finish: the run was never recorded delivered, and was posted again at each reclaim.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var streamId = await QueueAndReadAsync(db, entry);
        await db.StringSetAsync(RedisKeys.PortReports, "damaged");
        await BeginAsync(store, entry, "A");
        var report = new PortAzure.Dispatcher.PortReporting.PortReport("r_1", entry.DeliveryId, "delivered", "SUCCESS", "label");

        var finished = await store.FinishAsync(Finish(FinishMode.Delivered, entry, "A",
            new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Delivered)) with { StreamId = streamId, Report = report });

        Assert.StartsWith("WRONGTYPE", finished.ReportError, StringComparison.Ordinal);
        Assert.Equal(DeliveryStates.Delivered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
        Assert.Equal(0, await db.StreamLengthAsync(RedisKeys.Stream));
        // For the operator API (portReport "not_queued"): no report at all read as reporting off.
        var record = await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), [DeliveryRecord.PortReport, DeliveryRecord.PortReportAt, DeliveryRecord.PortReportEntry]);
        Assert.Equal(DeliveryRecord.PortReportNotQueued, (string?)record[0]);
        Assert.False(record[1].IsNullOrEmpty);
        Assert.True(record[2].IsNull);
    }

    [Fact]
    public async Task Finish_FailingHalfWayAndRunAgain_WritesThePortReportOnce()
    {
        // The report was written before the writes that can fail: each re-run of the finish added another copy.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var attempts = RedisKeys.Attempts(entry.DeliveryId);
        await db.StringSetAsync(attempts, "damaged");
        await BeginAsync(store, entry, "A");
        var report = new PortAzure.Dispatcher.PortReporting.PortReport("r_1", entry.DeliveryId, "failed", "FAILURE", "label");
        var finish = Finish(FinishMode.DeadLetter, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.DeadLettered))
            with { Report = report, AttemptJson = "{}" };

        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));
        await Assert.ThrowsAnyAsync<RedisException>(() => store.FinishAsync(finish));
        await db.KeyDeleteAsync(attempts);
        var finished = await store.FinishAsync(finish);

        Assert.Null(finished.ReportError);
        Assert.Single(await db.StreamRangeAsync(RedisKeys.PortReports));
        Assert.Equal(DeliveryStates.DeadLettered, (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
    }

    [Fact]
    public async Task Finish_RunWithRunId_KeepsItsRunIndexAsLongAsItsRecord()
    {
        // The index had the idempotency window (24 h in the recommended set-up): a dead letter, kept until an operator acts,
        // outlived it, and GET /api/deliveries?runId= answered "no deliveries".
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var (entry, index) = await IndexedEntryAsync(db);

        await DeadLetterAsync(store, entry, "A");
        Assert.Null(await db.KeyTimeToLiveAsync(index));
        Assert.True(await db.SetContainsAsync(index, entry.DeliveryId));

        // Replayed and delivered: as long as the delivered record (the retention, 1 h here).
        Assert.Equal(ReplayOutcome.Replayed, await store.ReplayAsync(entry.DeliveryId, DateTimeOffset.UtcNow));
        await DeliverAsync(store, entry, "B");
        Assert.InRange((await db.KeyTimeToLiveAsync(index))!.Value, TimeSpan.FromMinutes(59), TimeSpan.FromHours(1));
    }

    [Fact]
    public async Task Finish_AnotherDeliveryOfTheRunIsADeadLetter_LeavesTheRunIndexWithoutExpiry()
    {
        // Two deliveries of one run id (two webhooks): B's delivery, or its discard, gave the index an expiry while A was
        // still a dead letter, and the lookup then lost A.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var runId = TestRuns.NewRunId();
        var a = NewEntry() with { RunId = runId };
        var b = NewEntry() with { RunId = runId };
        var index = RedisKeys.RunIndex(runId);
        await DeadLetterAsync(store, a, "A");
        await DeadLetterAsync(store, b, "B");

        // B replayed and delivered, then A's twin discarded: A is still a dead letter each time.
        Assert.Equal(ReplayOutcome.Replayed, await store.ReplayAsync(b.DeliveryId, DateTimeOffset.UtcNow));
        await DeliverAsync(store, b, "B2");
        Assert.Null(await db.KeyTimeToLiveAsync(index));

        var c = NewEntry() with { RunId = runId };
        await DeadLetterAsync(store, c, "C");
        Assert.True(await store.DiscardAsync(c.DeliveryId, DateTimeOffset.UtcNow, TimeSpan.FromHours(1)));
        Assert.Null(await db.KeyTimeToLiveAsync(index));
        Assert.Equal(3, await db.SetLengthAsync(index));
    }

    [Fact]
    public async Task Finish_Retry_CoversTheRunIndexForTheRetentionAgain()
    {
        // An idempotency window shorter than the retry age let a retrying delivery's index expire under it.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var (entry, index) = await IndexedEntryAsync(db);
        await BeginAsync(store, entry, "A");

        await store.FinishAsync(Finish(FinishMode.Retry, entry, "A", new KeyValuePair<string, RedisValue>(DeliveryRecord.State, DeliveryStates.Retrying)));

        Assert.InRange((await db.KeyTimeToLiveAsync(index))!.Value, TimeSpan.FromMinutes(59), TimeSpan.FromHours(1));
    }

    [Fact]
    public async Task Discard_DeadLetterWithRunId_LetsItsRunIndexGoWithTheRecord()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry() with { RunId = TestRuns.NewRunId() };
        await DeadLetterAsync(store, entry, "A");
        Assert.Null(await db.KeyTimeToLiveAsync(RedisKeys.RunIndex(entry.RunId!)));

        Assert.True(await store.DiscardAsync(entry.DeliveryId, DateTimeOffset.UtcNow, TimeSpan.FromHours(2)));

        Assert.InRange((await db.KeyTimeToLiveAsync(RedisKeys.RunIndex(entry.RunId!)))!.Value, TimeSpan.FromHours(1.9), TimeSpan.FromHours(2));
    }

    [Fact]
    public async Task RemoveFromSchedule_ClaimedSlot_ForgetsTheClaimToo()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var store = new DeliveryStore(redis);
        var id = NewEntry().DeliveryId;
        await db.SortedSetAddAsync(RedisKeys.RetrySchedule, id, 0);
        await store.ClaimDueRetriesAsync(DateTimeOffset.UtcNow, TimeSpan.FromSeconds(10), 10);

        await store.RemoveFromScheduleAsync(id);

        Assert.Null(await db.SortedSetScoreAsync(RedisKeys.RetrySchedule, id));
        Assert.False(await db.HashExistsAsync(RedisKeys.RetryClaims, id));
    }

    [Fact]
    public async Task Begin_FinishedDelivery_TakesNoLeaseNoClaimAndNoProbe()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var store = new DeliveryStore(redis);
        var entry = NewEntry();
        await db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State, DeliveryStates.Discarded);
        await db.HashSetAsync(RedisKeys.PausedTargets, entry.Target, 1);

        var begin = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30));

        Assert.True(begin.AlreadyFinished);
        Assert.False(await db.KeyExistsAsync(RedisKeys.Lease(entry.DeliveryId)));
        Assert.False(await db.HashExistsAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Claims));
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.PausedTargets, entry.Target));
    }

    [Fact]
    public async Task Begin_RetriedAfterATimeout_StillOwnsItsLease()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var redis = leased.Connection;
        var store = new DeliveryStore(redis);
        var entry = NewEntry();

        await BeginAsync(store, entry, "A");
        await BeginAsync(store, entry, "A");
        Assert.False((await store.BeginAsync(entry, "B", TimeSpan.FromSeconds(30), false, DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30))).Leased);
    }

    [Fact]
    public async Task Begin_ClaimedAndRetriedAfterALostReply_CountsOneClaimAndKeepsItsProbe()
    {
        // The first reply was lost (a timeout); the retry runs the script again with the same token and time.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        // A paused target whose probe is due: this attempt is its probe.
        await db.HashSetAsync(RedisKeys.PausedTargets, entry.Target, now.AddSeconds(-1).ToUnixTimeMilliseconds());

        var first = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, now, TimeSpan.FromSeconds(30));
        var again = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, now, TimeSpan.FromSeconds(30));

        Assert.Equal((true, 1, (DateTimeOffset?)null), (first.Leased, first.Claims, first.PausedUntil));
        Assert.Equal((true, 1, (DateTimeOffset?)null), (again.Leased, again.Claims, again.PausedUntil));
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Claims));
        // Another attempt at the same target meanwhile finds it paused until the probe's answer.
        var other = NewEntry();
        Assert.NotNull((await store.BeginAsync(other, "B", TimeSpan.FromSeconds(30), claimed: false, now, TimeSpan.FromSeconds(30))).PausedUntil);
    }

    [Fact]
    public async Task Begin_RecordNotAHash_SetsItAsideAndSaysSoAgainAfterALostReply()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        await db.ListRightPushAsync(RedisKeys.Delivery(entry.DeliveryId), "not a hash");

        var first = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, now, TimeSpan.FromSeconds(30), TimeSpan.FromHours(2));
        // The retry of a call whose reply was lost finds the record it left (an empty one would be taken for a new run).
        var again = await store.BeginAsync(entry, "A", TimeSpan.FromSeconds(30), claimed: true, now, TimeSpan.FromSeconds(30), TimeSpan.FromHours(2));

        Assert.Equal((true, "list", 1), (first.Leased, first.DamagedRecord, first.Claims));
        Assert.Equal((true, "list", 1), (again.Leased, again.DamagedRecord, again.Claims));
        var kept = RedisKeys.DamagedDelivery(entry.DeliveryId);
        Assert.Equal("not a hash", (string?)await db.ListGetByIndexAsync(kept, 0));
        Assert.InRange((await db.KeyTimeToLiveAsync(kept))!.Value, TimeSpan.FromHours(1.9), TimeSpan.FromHours(2));
        Assert.Equal("list", (string?)await db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Damaged));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Finish_Outcome_KeepsTheRecordAndAttemptLogForTheirRetention(bool delivered)
    {
        var mode = delivered ? FinishMode.Delivered : FinishMode.DeadLetter;
        // A delivered run's record and attempts go after the retention (Redis would otherwise grow without bound);
        // a dead letter's stay until an operator acts (its history is what they act on).
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        await BeginAsync(store, entry, "A");
        // An earlier attempt's line, with the retention a retry gives it.
        await db.ListRightPushAsync(RedisKeys.Attempts(entry.DeliveryId), "{}");
        await db.KeyExpireAsync(RedisKeys.Attempts(entry.DeliveryId), TimeSpan.FromHours(1));

        await store.FinishAsync(Finish(mode, entry, "A",
            new KeyValuePair<string, RedisValue>(DeliveryRecord.State, mode == FinishMode.Delivered ? DeliveryStates.Delivered : DeliveryStates.DeadLettered))
            with { AttemptJson = "{\"attempt\":2}", Retention = TimeSpan.FromHours(2) });

        var recordTtl = await db.KeyTimeToLiveAsync(RedisKeys.Delivery(entry.DeliveryId));
        var attemptsTtl = await db.KeyTimeToLiveAsync(RedisKeys.Attempts(entry.DeliveryId));
        Assert.Equal(2, await db.ListLengthAsync(RedisKeys.Attempts(entry.DeliveryId)));
        if (mode == FinishMode.Delivered)
        {
            Assert.InRange(recordTtl!.Value, TimeSpan.FromHours(2) - TimeSpan.FromMinutes(1), TimeSpan.FromHours(2));
            Assert.InRange(attemptsTtl!.Value, TimeSpan.FromHours(2) - TimeSpan.FromMinutes(1), TimeSpan.FromHours(2));
        }
        else
        {
            Assert.Null(recordTtl);
            Assert.Null(attemptsTtl);
        }
    }

    [Fact]
    public async Task Replay_StreamDamaged_StaysADeadLetter()
    {
        // Redis keeps a script's writes up to a failing command: a dead letter taken out of its index before the
        // XADD failed would be neither a dead letter nor queued.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        const string id = "d_0123456789abcdef0123456789abcdef";
        await DeadLetterRecords.AddAsync(db, id, 1, "{}");
        await db.StringSetAsync(RedisKeys.Stream, "damaged");

        await Assert.ThrowsAnyAsync<RedisException>(() => store.ReplayAsync(id, DateTimeOffset.UtcNow));

        Assert.Equal(1, await db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
        Assert.Equal(DeliveryStates.DeadLettered, (string?)await db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State));
        Assert.Equal("{}", (string?)await db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.Body));
    }

    [Fact]
    public async Task Discard_RecordDamaged_GoesWithItsIndexEntry()
    {
        // The operator's way out of a dead letter that cannot be replayed: an error here would leave it there for good.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        const string id = "d_0123456789abcdef0123456789abcdef";
        await db.SortedSetAddAsync(RedisKeys.DeadLetters, id, 1);
        await db.StringSetAsync(RedisKeys.Delivery(id), "damaged");

        Assert.True(await store.DiscardAsync(id, DateTimeOffset.UtcNow, TimeSpan.FromHours(1)));

        Assert.Null(await db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
        Assert.False(await db.KeyExistsAsync(RedisKeys.Delivery(id)));
    }

    [Theory]
    [InlineData("not-a-number")]
    [InlineData("")]
    [InlineData("1e20")]
    [InlineData("999999999999999")]
    [InlineData("253402300800000")]
    public async Task Replay_DamagedReceiptTime_QueuesAnEntryTheDispatcherCanRead(string at)
    {
        // The entry carried the damaged time: the Dispatcher dropped it as malformed, and the run (answered 202) was lost.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        var entry = NewEntry();
        var now = DateTimeOffset.UtcNow;
        await db.SortedSetAddAsync(RedisKeys.DeadLetters, entry.DeliveryId, 1);
        await db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId),
            [.. PortAzure.Dispatcher.Delivery.DeliveryProcessor.EntryFields(entry, DeliveryStates.DeadLettered, now).Select(f => new HashEntry(f.Key, f.Value)),
                new(DeliveryRecord.ReceivedAt, at)]);

        Assert.Equal(ReplayOutcome.Replayed, await store.ReplayAsync(entry.DeliveryId, now));

        var queued = DeliveryEntry.FromStreamEntry(Assert.Single(await db.StreamRangeAsync(RedisKeys.Stream)));
        Assert.NotNull(queued);
        Assert.Equal(now.ToUnixTimeMilliseconds(), queued.ReceivedAt.ToUnixTimeMilliseconds());
    }

    [Fact]
    public async Task Replay_DeadLetterWithoutBody_StaysADeadLetter()
    {
        await using var leased = await SharedRedis.ConnectAsync();
        var (redis, db) = (leased.Connection, leased.Db);
        var store = new DeliveryStore(redis);
        const string id = "d_0123456789abcdef0123456789abcdef";
        await db.SortedSetAddAsync(RedisKeys.DeadLetters, id, 1);
        await db.HashSetAsync(RedisKeys.Delivery(id), [new(DeliveryRecord.State, DeliveryStates.DeadLettered), new(DeliveryRecord.Org, "contoso")]);

        Assert.Equal(ReplayOutcome.NotReplayable, await store.ReplayAsync(id, DateTimeOffset.UtcNow));

        Assert.Equal(1, await db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.Equal(0, await db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Replay_DamagedReplayCount_IsReplayedAndLeavesTheDeadLetters()
    {
        // The count is written after the XADD: failing there left the run queued and still a dead letter.
        await using var leased = await SharedRedis.ConnectAsync();
        var (store, db) = (new DeliveryStore(leased.Connection), leased.Db);
        const string id = "d_0123456789abcdef0123456789abcdef";
        await DeadLetterRecords.AddAsync(db, id, 1, "{}", new HashEntry(DeliveryRecord.Replays, "damaged"));

        Assert.Equal(ReplayOutcome.Replayed, await store.ReplayAsync(id, DateTimeOffset.UtcNow));

        Assert.Equal(0, await db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.Equal(1, await db.StreamLengthAsync(RedisKeys.Stream));
        Assert.Equal(1, (long)await db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.Replays));
    }

    [Fact]
    public async Task Dispatcher_DamagedStreamEntry_IsDroppedAndDeliveryGoesOn()
    {
        await using var relay = await Relay.StartAsync();
        await relay.Db.StreamAddAsync(RedisKeys.Stream, [new("id", "d_x"), new("org", "contoso"), new("webhook", "deploy"), new("body", "{}"), new("key", "k"), new("at", "not-a-number")]);

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);

        await DeliveryOutcomeTests.WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0, TimeSpan.FromSeconds(10), "the damaged entry is deleted");
        using var health = await relay.Dispatcher.Client.GetAsync("/alive");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        // The line names the delivery the entry carried, which is what an operator can look up.
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2105]", StringComparison.Ordinal) && l.Contains("(delivery d_x)", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Dispatcher_ScheduledRetryWhoseReceivedAtIsOutOfRange_IsDroppedAndDeliveryGoesOn()
    {
        await using var relay = await Relay.StartAsync();
        const string damaged = "d_0123456789abcdef0123456789abcdef";
        await relay.Db.HashSetAsync(RedisKeys.Delivery(damaged),
            [new("org", "contoso"), new("webhook", "deploy"), new("body", "{}"), new("key", "k"), new("at", "99999999999999999")]);
        await relay.Db.SortedSetAddAsync(RedisKeys.RetrySchedule, damaged, 0);

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);

        // A throw while loading it would end every pass of the worker before it reads new runs.
        await DeliveryOutcomeTests.WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule) == 0, TimeSpan.FromSeconds(10), "the damaged retry leaves the schedule");
    }
}

public class ConsumerCleanupTests
{
    [Fact]
    public async Task Start_StoppedConsumersWithNothingPending_AreRemovedOthersKept()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "0.5";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "600";
        }, dispatchers: 0);
        await relay.Db.StreamCreateConsumerGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "0-0", createStream: true);
        await relay.Db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "stopped-empty", ">", 1);
        await DeliveryOutcomeTests.SendAsync(relay);
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "stopped-with-pending", ">", 1));
        await Task.Delay(2000);

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.Db.StreamConsumerInfoAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup))
            .All(c => c.Name != "stopped-empty"), TimeSpan.FromSeconds(10), "the stopped consumer is removed");

        var names = (await relay.Db.StreamConsumerInfoAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).Select(c => (string)c.Name!).ToList();
        Assert.Contains("stopped-with-pending", names);
    }
}
