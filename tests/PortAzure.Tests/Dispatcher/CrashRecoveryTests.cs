using System.Net;
using Microsoft.Extensions.DependencyInjection;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace PortAzure.Tests.Dispatcher;

[Collection(HeavyTests.Name)]
public class CrashRecoveryTests(ITestOutputHelper output)
{
    private const int MaxConcurrency = 64;

    [Fact]
    public async Task Dispatcher_KilledWithSigkillMidStream_AnotherDeliversEverything_DuplicatesBoundedByInFlight()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 150 });
        var config = new Dictionary<string, string?>(relay.Config)
        {
            ["Dispatcher:MaxConcurrency"] = MaxConcurrency.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Dispatcher:RequestTimeoutSeconds"] = "5",
            ["Dispatcher:ClaimMarginSeconds"] = "1",
            ["Dispatcher:ClaimIntervalSeconds"] = "0.5",
            // The killed process's leases run out after timeout + this + margin/2: short, so the test is.
            ["Dispatcher:FinishRetrySeconds"] = "1",
        };
        var runIds = Enumerable.Range(0, 500).Select(_ => TestRuns.NewRunId()).ToList();
        await relay.SendAllAcceptedAsync(runIds);

        string firstOutput;
        int failedHere;
        using (var first = ServiceProcess.StartDispatcher(config))
        {
            await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 120, TimeSpan.FromSeconds(60), "the first Dispatcher is mid-stream");
            first.Kill();
            firstOutput = first.Output;
            // An attempt whose finish failed for longer than FinishRetrySeconds (1 s here: a starved machine's Redis can take
            // that) gives its slot up and leaves its entry pending (Error 2106), so the killed Dispatcher can hold one more
            // posted entry per such failure than it has slots. Every Error line is counted as one (an upper bound).
            failedHere = first.ErrorLines;
        }
        var atKill = (await relay.EmulatorApi.RequestsAsync()).Count;
        var pendingAtKill = (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount;

        using var second = ServiceProcess.StartDispatcher(config);
        // Done when every run arrived and nothing is left in the stream: the entries the killed
        // Dispatcher held are reclaimed (after timeout + margin) and finished too.
        await Eventually.HoldsAsync(async () =>
                (await relay.EmulatorApi.RequestsAsync()).Select(r => r.Header("X-Port-Run-Id")).Distinct().Count() == 500 &&
                await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0,
            TimeSpan.FromSeconds(90), "every run delivered and every entry finished after the restart");
        await Task.Delay(500);

        var requests = await relay.EmulatorApi.RequestsAsync();
        // A POST that timed out (the emulator answers in 150 ms, but a starved machine can stretch that past the 5-s timeout)
        // is retried, and may reach the emulator twice: the documented duplicate of a lost answer, not the crash's. Counted
        // apart from those the kill left, which are bounded by what the killed Dispatcher held.
        var duplicates = 0;
        var timedOut = 0;
        foreach (var posts in requests.GroupBy(r => r.Header("X-Port-Run-Id")).Where(g => g.Count() > 1))
        {
            var attempts = await relay.Db.ListRangeAsync(RedisKeys.Attempts(posts.First().Header("Idempotency-Key")!));
            if (attempts.Any(a => a.ToString().Contains("\"error\":\"timeout\"", StringComparison.Ordinal)))
            {
                timedOut++;
            }
            else
            {
                duplicates += posts.Count() - 1;
            }
        }
        output.WriteLine($"POSTs before the kill: {atKill}; entries pending at the kill: {pendingAtKill}; runs delivered twice: {duplicates} (and {timedOut} after a timed-out POST)");
        output.WriteLine($"Error lines of the killed Dispatcher (attempts it gave up among them): {failedHere}");
        output.WriteLine("The killed Dispatcher's last lines:\n" + firstOutput);
        output.WriteLine("The second Dispatcher's last lines:\n" + second.Output);
        Assert.Equal(runIds.Order(), requests.Select(r => r.Header("X-Port-Run-Id")!).Distinct().Order());
        Assert.InRange(duplicates, 0, MaxConcurrency + failedHere);
        Assert.True(duplicates <= pendingAtKill, $"{duplicates} duplicates but only {pendingAtKill} entries were in flight");
    }

    /// <summary>Queues one run and has <paramref name="consumer"/> read it (then "die": it never acknowledges).</summary>
    private static async Task<StreamEntry> QueueOneReadByAsync(Relay relay, string consumer)
    {
        using (var response = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId())))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }
        await PortAzure.Dispatcher.Delivery.ConsumerGroup.EnsureAsync(relay.Db, RedisKeys.Stream, RedisKeys.ConsumerGroup);
        return Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, consumer, ">", 10));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task PendingEntry_OfAConsumerRestartedUnderItsName_IsReadBackAtStart(bool sameName)
    {
        // A Dispatcher with a configured name read an entry and stopped before starting it (a crash). Restarted under the
        // same name, it holds the entry still and reads it back at once; under another name the entry waits for the reclaim
        // (timeout + margin, 30 s by default).
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var read = await QueueOneReadByAsync(relay, "dispatcher-0");
        var deliveryId = DeliveryEntry.FromStreamEntry(read)!.DeliveryId;

        var dispatcher = await relay.AddDispatcherAsync(c => c["Dispatcher:ConsumerName"] = sameName ? "dispatcher-0" : "dispatcher-1");

        if (sameName)
        {
            await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered
                && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0,
                TimeSpan.FromSeconds(15), "delivered well before the reclaim (30 s)");
            Assert.Single(await relay.EmulatorApi.RequestsAsync());
            Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2111]", StringComparison.Ordinal));
            // Counted as a claim, as the reclaim would have: a run that crashes every Dispatcher still ends as poison.
            Assert.Equal(1, (long)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Claims));
        }
        else
        {
            await Task.Delay(TimeSpan.FromSeconds(5));
            Assert.Empty(await relay.EmulatorApi.RequestsAsync());
            Assert.Equal("dispatcher-0", Assert.Single(await relay.Db.StreamPendingMessagesAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, 10, RedisValue.Null)).ConsumerName);
            Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2111]", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task PendingEntries_MoreHeldByRunningLeasesThanSlots_TheReadBackGoesOnToTheOnesAfterThem()
    {
        // Restarted under its name with 2 slots, the Dispatcher holds 3 entries whose crashed attempts' leases still run,
        // then 1 it never started. Each read back began from the start: it found the first 2 again (each given up at once,
        // "leased by another"), round after round without a pause, and never reached the last one (tens of thousands of
        // begin scripts and 2111 lines in 5 s).
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var store = new PortAzure.Dispatcher.Delivery.DeliveryStore(relay.Redis);
        for (var i = 0; i < 3; i++)
        {
            var held = DeliveryEntry.FromStreamEntry(await QueueOneReadByAsync(relay, "dispatcher-0"))!;
            Assert.True((await store.BeginAsync(held, $"dispatcher-0/attempt-{i}", TimeSpan.FromSeconds(60), false, DateTimeOffset.UtcNow,
                TimeSpan.FromSeconds(30))).Leased);
        }
        var unstarted = DeliveryEntry.FromStreamEntry(await QueueOneReadByAsync(relay, "dispatcher-0"))!.DeliveryId;

        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            c["Dispatcher:ConsumerName"] = "dispatcher-0";
            c["Dispatcher:MaxConcurrency"] = "2";
        });

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(unstarted), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(15), "the entry after the held ones delivered, well before the reclaim (30 s) and the leases (60 s)");
        await Task.Delay(TimeSpan.FromSeconds(1));

        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        // Two read backs (2 entries, then the last 2): no loop.
        var readBacks = dispatcher.Logs.Lines.Count(l => l.Contains("[2111]", StringComparison.Ordinal));
        Assert.True(readBacks <= 3, $"{readBacks} read backs");
        Assert.True(dispatcher.Logs.Lines.Count(l => l.Contains("[2004]", StringComparison.Ordinal)) <= 3, "each held entry given up about once");
    }

    [Fact]
    public async Task PendingEntry_CrashedAttemptsLeaseOutlastsSeveralReclaims_OneReclaimWarning()
    {
        // A Dispatcher killed mid-POST leaves its entry pending and its lease running (longer than the reclaim time). The
        // entry was reclaimed, given up ("leased by another"), and reclaimed again until the lease ended: a Warning 2104
        // "from stopped consumers" each time, which the operations guide reads as Dispatchers that keep dying.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        var held = DeliveryEntry.FromStreamEntry(await QueueOneReadByAsync(relay, "dead-consumer"))!;
        var store = new PortAzure.Dispatcher.Delivery.DeliveryStore(relay.Redis);
        // A lease long enough for several reclaims (3 s apart) however slowly the Dispatcher below starts.
        Assert.True((await store.BeginAsync(held, "dead-consumer/attempt", TimeSpan.FromSeconds(20), false, DateTimeOffset.UtcNow,
            TimeSpan.FromSeconds(30))).Leased);

        var dispatcher = await relay.AddDispatcherAsync();

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(held.DeliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(45), "delivered once the crashed attempt's lease ended");
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2004]", StringComparison.Ordinal)); // given up while the lease ran
        Assert.Single(dispatcher.Logs.Lines, l => l.Contains("[2104]", StringComparison.Ordinal));
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2112]", StringComparison.Ordinal));
        Assert.Equal(1, (long)await relay.Db.HashGetAsync(RedisKeys.Delivery(held.DeliveryId), DeliveryRecord.Claims));
    }

    [Fact]
    public async Task PendingEntry_OfAStoppedConsumer_IsNotClaimedBeforeTimeoutPlusMargin()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "3";
            c["Dispatcher:ClaimMarginSeconds"] = "2";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        // A consumer reads the entry and dies without a trace. readAt is taken before the read, so that the
        // time measured from it is never shorter than the entry's idle time, however slow this process is.
        var readAt = DateTimeOffset.UtcNow;
        await QueueOneReadByAsync(relay, "dead-consumer");

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "the entry is reclaimed and delivered");

        var deliveredAt = (await relay.EmulatorApi.RequestsAsync())[0].ReceivedAt;
        // 0.1 s for the clocks' granularity, well clear of the 3 s request timeout a premature claim would use.
        Assert.True(deliveredAt - readAt >= TimeSpan.FromSeconds(4.9), $"claimed after {(deliveredAt - readAt).TotalSeconds:F1} s, before timeout + margin (5 s)");
    }

    [Fact]
    public async Task PendingEntry_WallClockSteppedBack_IsStillReclaimedAfterTheClaimInterval()
    {
        // The claim interval is counted in elapsed time: counted on the wall clock, a step back of an hour would hold
        // off reclaiming a crashed replica's runs for that hour.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "1";
            c["Dispatcher:ClaimMarginSeconds"] = "3";
            c["Dispatcher:ClaimIntervalSeconds"] = "60";
            c["Dispatcher:PollIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        // The first entry is idle long enough (4 s) for the Dispatcher's first claim; the second is kept from being so
        // until that claim is over (its idle time reset every 0.2 s, its owner kept), however long the start takes.
        await QueueOneReadByAsync(relay, "dead-consumer-1");
        await Task.Delay(TimeSpan.FromSeconds(4.5));
        var second = await QueueOneReadByAsync(relay, "dead-consumer-2");
        using var touching = new CancellationTokenSource();
        var toucher = Task.Run(async () =>
        {
            while (!touching.IsCancellationRequested)
            {
                await relay.Db.StreamClaimIdsOnlyAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "dead-consumer-2", 0, [second.Id]);
                await Task.Delay(200);
            }
        });
        var clock = new SteppedClock();
        try
        {
            await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
            // Delivered and recorded (acknowledged in the same step): the POST alone comes before the acknowledgement.
            await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1
                    && (await relay.Db.StreamPendingMessagesAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, 10, RedisValue.Null)).Length == 1,
                TimeSpan.FromSeconds(20), "the first claim delivers the first entry");
        }
        finally
        {
            // The next claim is due 60 s on, on the fake clock, which does not move by itself.
            await touching.CancelAsync();
            await toucher;
        }
        var left = Assert.Single(await relay.Db.StreamPendingMessagesAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, 10, RedisValue.Null));
        Assert.True(left.ConsumerName == "dead-consumer-2", $"left with {left.ConsumerName}: the first claim came too late for this test");

        // Idle long enough for the next claim, which is due 60 s on; the wall clock goes back an hour meanwhile.
        await Eventually.HoldsAsync(async () => (await relay.Db.StreamPendingMessagesAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, 10,
            RedisValue.Null)).Single().IdleTimeInMilliseconds > 4200, TimeSpan.FromSeconds(10), "the second entry idle for 4 s");
        clock.StepBack(TimeSpan.FromHours(1));
        clock.Advance(TimeSpan.FromSeconds(61));

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(20),
            "the second entry is reclaimed and delivered");
    }

    [Fact]
    public async Task Poison_EntryClaimedTooOften_IsDeadLettered()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "0.5";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
            c["Dispatcher:MaxClaims"] = "2";
        }, dispatchers: 0);
        var entry = await QueueOneReadByAsync(relay, "crashing-consumer");
        var deliveryId = DeliveryEntry.FromStreamEntry(entry)!.DeliveryId;
        // It has crashed its consumers twice already.
        await relay.Db.HashSetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Claims, 2);

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 1, TimeSpan.FromSeconds(60), "the poison entry is dead-lettered");

        Assert.Equal("poison", (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Reason));
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
    }

    /// <summary>
    /// A delivery waiting in the retry schedule, moved there from the stream as a failed attempt does, that
    /// has already crashed its consumers twice; <paramref name="crashedClaim"/>: a replica claimed its slot
    /// and died before finishing, so the slot fell due again.
    /// </summary>
    private static async Task<string> ScheduledRetryAsync(Relay relay, bool crashedClaim)
    {
        var read = await QueueOneReadByAsync(relay, "failing-consumer");
        var entry = DeliveryEntry.FromStreamEntry(read)!;
        var store = new PortAzure.Dispatcher.Delivery.DeliveryStore(relay.Redis);
        var now = DateTimeOffset.UtcNow;
        Assert.True((await store.BeginAsync(entry, "failing-consumer/attempt", TimeSpan.FromSeconds(30), false, now, TimeSpan.FromSeconds(30))).Leased);
        await store.FinishAsync(new(PortAzure.Dispatcher.Delivery.FinishMode.Retry, entry, read.Id.ToString(), "failing-consumer/attempt", now, now,
            TimeSpan.FromHours(1), null, 20, now,
            [.. PortAzure.Dispatcher.Delivery.DeliveryProcessor.EntryFields(entry, DeliveryStates.Retrying, now), new(DeliveryRecord.Attempts, 1)]));
        await relay.Db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Claims, 2);
        if (crashedClaim)
        {
            // Claimed with a lease that has already run out, then nothing: the replica died.
            Assert.Equal([(entry.DeliveryId, false)], await store.ClaimDueRetriesAsync(now, TimeSpan.Zero, 10));
        }
        return entry.DeliveryId;
    }

    [Fact]
    public async Task Poison_RetryWhoseClaimsCrashedTooOften_IsDeadLettered()
    {
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:MaxClaims"] = "2", dispatchers: 0);
        var deliveryId = await ScheduledRetryAsync(relay, crashedClaim: true);

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 1, TimeSpan.FromSeconds(30), "the poison retry is dead-lettered");

        Assert.Equal("poison", (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Reason));
        Assert.Equal(3, (long)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Claims));
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule));
        Assert.Equal(0, await relay.Db.HashLengthAsync(RedisKeys.RetryClaims));
    }

    [Fact]
    public async Task ScheduledRetry_ClaimedForTheFirstTime_IsNotCountedAsACrash()
    {
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:MaxClaims"] = "2", dispatchers: 0);
        var deliveryId = await ScheduledRetryAsync(relay, crashedClaim: false);

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(30), "the retry is delivered");

        Assert.Equal(2, (long)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Claims));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(0, await relay.Db.HashLengthAsync(RedisKeys.RetryClaims));
    }

    [Fact]
    public async Task ScheduledRetry_StoppedWhileItsBeginRetries_ItsClaimIsUndoneAndTheEarlierCrashStillCounts()
    {
        // A retry claimed again after a crashed claim, whose begin rides out a Redis error when the stop comes: given back
        // unposted and due again at once, its own claim undone, the crashed one still counted. The claim was undone by
        // deleting the slot's count, which forgot the crash (poison one claim later).
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var deliveryId = await ScheduledRetryAsync(relay, crashedClaim: true);
        // A lease key of the wrong type: every Begin try fails (WRONGTYPE) and is retried after a backoff.
        await relay.Db.HashSetAsync(RedisKeys.Lease(deliveryId), "damaged", 1);
        var dispatcher = await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains("[2007]", StringComparison.Ordinal)
            && l.Contains(deliveryId, StringComparison.Ordinal))), TimeSpan.FromSeconds(10), "a Begin try failed");
        Assert.Equal(2, (long)await relay.Db.HashGetAsync(RedisKeys.RetryClaims, deliveryId));

        await relay.StopDispatcherAsync(dispatcher);

        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2008]", StringComparison.Ordinal));
        Assert.Equal(1, (long)await relay.Db.HashGetAsync(RedisKeys.RetryClaims, deliveryId));
        Assert.True(await relay.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, deliveryId) <= DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
            "due again at once");
    }

    [Fact]
    public async Task ScheduledRetry_RedisFailsBeforeItStarts_ClaimIsReleasedAndNotCountedAsACrash()
    {
        // Its own Redis: the ACL change below applies to every client of the server.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:MaxClaims"] = "2", dispatchers: 0, redisConnection: redis.ConnectionString);
        var deliveryId = await ScheduledRetryAsync(relay, crashedClaim: false);
        // Loading the claimed retry's record (HGETALL, used by nothing else in this round) is refused: a Redis error
        // between the claim and the start, as a failover at that moment would be.
        await relay.Db.ExecuteAsync("ACL", "SETUSER", "default", "-hgetall");

        var dispatcher = await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains("[2103]", StringComparison.Ordinal) && l.Contains("NOPERM", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(30), "the round fails loading the record");
        // Released after each failed round (the worker claims it again after its back-off, so only briefly held).
        await Eventually.HoldsAsync(async () => !await relay.Db.HashExistsAsync(RedisKeys.RetryClaims, deliveryId),
            TimeSpan.FromSeconds(5), "the failed round's claim is released");

        // Redis answers again, and the retry is due (as it would be once the claim's lease ran out): one more claim
        // would make three, over MaxClaims, had a failed round's claim been left to count as a crash.
        await relay.Db.ExecuteAsync("ACL", "SETUSER", "default", "+hgetall");
        await relay.Db.SortedSetAddAsync(RedisKeys.RetrySchedule, deliveryId, 0);
        var record = RedisKeys.Delivery(deliveryId);
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.State) is DeliveryStates.Delivered or DeliveryStates.DeadLettered,
            TimeSpan.FromSeconds(30), "the retry is finished");

        Assert.Equal(DeliveryStates.Delivered, (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.State));
        Assert.Equal(2, (long)await relay.Db.HashGetAsync(record, DeliveryRecord.Claims));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(0, await relay.Db.HashLengthAsync(RedisKeys.RetryClaims));
    }

    [Fact]
    public async Task ScheduledRetry_WhoseRecordIsNotAHash_IsDroppedAndNewRunsAreDelivered()
    {
        // Taken for an outage, its WRONGTYPE failed every round of every Dispatcher before any new run was read, and the
        // released slot was due again at once: delivery stopped until someone repaired the key by hand.
        await using var relay = await Relay.StartAsync();
        var damaged = "d_" + Guid.NewGuid().ToString("N");
        await relay.Db.StringSetAsync(RedisKeys.Delivery(damaged), "not a hash");
        await relay.Db.SortedSetAddAsync(RedisKeys.RetrySchedule, damaged, 0);

        await DeliveryOutcomeTests.WaitForStateAsync(relay, await DeliveryOutcomeTests.SendAsync(relay), DeliveryStates.Delivered);

        Assert.Null(await relay.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, damaged));
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2105]", StringComparison.Ordinal) && l.Contains(damaged, StringComparison.Ordinal));
        Assert.Equal("not a hash", (string?)await relay.Db.StringGetAsync(RedisKeys.Delivery(damaged)));
    }

    [Fact]
    public async Task QueuedRun_WhoseRecordIsNotAHash_IsDeadLetteredUnpostedAndReplayable()
    {
        // Its begin failed (WRONGTYPE, retried as an outage) at every reclaim, for good: never posted nor dead-lettered,
        // its claims never counted. Whether it was posted before the damage is unknown, so it is not posted now.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        await relay.Db.StringSetAsync(RedisKeys.Delivery(deliveryId), "not a hash");

        var dispatcher = await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, deliveryId) is not null,
            TimeSpan.FromSeconds(30), "the run is dead-lettered");

        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        var record = RedisKeys.Delivery(deliveryId);
        Assert.Equal("record_damaged", (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.Reason));
        Assert.Contains(RedisKeys.DamagedDelivery(deliveryId), (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.Hint));
        Assert.Equal("not a hash", (string?)await relay.Db.StringGetAsync(RedisKeys.DamagedDelivery(deliveryId)));

        // The operator looked: the replay posts it, once. (To the Dispatcher itself: with none at its start, the Ingress
        // knows no address to proxy to.)
        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var answer = await dispatcher.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, answer.StatusCode);
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(30), "the replayed run is delivered");
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.False(await relay.Db.HashExistsAsync(record, DeliveryRecord.Damaged));
    }

    [Fact]
    public async Task QueuedRun_WhoseRecordHasADamagedAttemptCount_IsDeliveredOnce()
    {
        // Its begin failed after taking the lease (the count did not parse), before the poison check: reclaimed and failing
        // again for good, never posted nor dead-lettered.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        await relay.Db.HashSetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Attempts, "damaged");

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(30), "the run is delivered");

        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(1, (long)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Attempts));
    }

    [Fact]
    public async Task ReclaimedEntry_WhoseDeadAttemptHadTakenALease_IsDeliveredAtTheFirstReclaim()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:ClaimMarginSeconds"] = "2";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        // readAt before the read: the time measured from it is never shorter than the entry's idle time.
        var readAt = DateTimeOffset.UtcNow;
        var read = await QueueOneReadByAsync(relay, "dead-consumer");
        // The dead consumer got as far as its lease right after reading. A 2 s lease runs out well before the
        // claim at 4 s idle, however slow this machine; one running out near the claim could be found held by
        // it, and the entry would wait another 4 s.
        var store = new PortAzure.Dispatcher.Delivery.DeliveryStore(relay.Redis);
        Assert.True((await store.BeginAsync(DeliveryEntry.FromStreamEntry(read)!, "dead-consumer/attempt", TimeSpan.FromSeconds(2), false,
            DateTimeOffset.UtcNow, TimeSpan.FromSeconds(30))).Leased);

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(30), "delivered");

        // Reclaimed after 4 s idle, when the lease has run out: not before, and not found held by the dead attempt's
        // lease (which would make it wait for the next reclaim).
        var after = (await relay.EmulatorApi.RequestsAsync())[0].ReceivedAt - readAt;
        Assert.True(after >= TimeSpan.FromSeconds(3.9), $"reclaimed after {after.TotalSeconds:F1} s, before the 4 s idle time");
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2004]", StringComparison.Ordinal));
    }
}
