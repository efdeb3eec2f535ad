using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

public class ShutdownTests
{
    [Fact]
    public async Task HostOptions_Dispatcher_StopsItsServicesSideBySideWithinGracePlusFiveSeconds()
    {
        // One after the other, a drain that used its whole grace (+3 s to unwind) left the Port reporter ~2 s of
        // the timeout, less than the 3 s a call under way gets before its report is handed back.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:ShutdownGraceSeconds"] = "12");

        var host = relay.Dispatcher.Services.GetRequiredService<IOptions<HostOptions>>().Value;

        Assert.True(host.ServicesStopConcurrently);
        Assert.Equal(TimeSpan.FromSeconds(17), host.ShutdownTimeout);
    }

    [Fact]
    public async Task Stop_WithPostsInFlight_LetsThemFinishAndLeavesTheRestForOthers()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:MaxConcurrency"] = "2";
            // Far above the emulator's 5 s: a timeout here would be a (documented) retry, not what is tested.
            c["Dispatcher:RequestTimeoutSeconds"] = "15";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
            c["Dispatcher:FinishRetrySeconds"] = "1";
        });
        // Long enough that the stop surely lands while the first two POSTs are in flight.
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 5000 });
        var ids = new List<string>();
        for (var i = 0; i < 5; i++)
        {
            ids.Add(await DeliveryOutcomeTests.SendAsync(relay));
        }
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 2, TimeSpan.FromSeconds(10), "two POSTs in flight");

        await relay.StopDispatcherAsync(relay.Dispatcher);

        var states = new List<string>();
        foreach (var id in ids)
        {
            states.Add((string)(await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State))!);
        }
        // Every POST under way at the stop finished and was recorded; nothing else was started.
        var posted = (await relay.EmulatorApi.RequestsAsync()).Count;
        Assert.InRange(posted, 2, 3);
        Assert.Equal(posted, states.Count(s => s == DeliveryStates.Delivered));
        Assert.Equal(5 - posted, states.Count(s => s == DeliveryStates.Queued));
        Assert.Equal(5 - posted, await relay.Db.StreamLengthAsync(RedisKeys.Stream));

        using var fast = await relay.Emulator.Client.DeleteAsync("_emulator/behavior");
        await relay.AddDispatcherAsync();
        foreach (var id in ids)
        {
            await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State) == DeliveryStates.Delivered,
                // An entry the stopping Dispatcher had read but not started is reclaimed after its lease (16 s).
                TimeSpan.FromSeconds(60), $"{id} delivered by the next Dispatcher");
        }
        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.True(requests.Count == 5, "POSTs: " + string.Join("; ", requests.Select(r => $"{r.ReceivedAt:HH:mm:ss.fff} {r.Header("Idempotency-Key")}")));
    }

    [Fact]
    public async Task Stop_GraceRunsOutMidPost_TheAbandonedAttemptGivesItsLeaseBack()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:ShutdownGraceSeconds"] = "0";
            c["Dispatcher:RequestTimeoutSeconds"] = "15";
        });
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 5000 });
        var id = await DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(10), "the POST is in flight");
        Assert.True(await relay.Db.KeyExistsAsync(RedisKeys.Lease(id)));

        await relay.StopDispatcherAsync(relay.Dispatcher);

        // Left for another replica, and not held back for the whole lease (timeout + finish window + margin/2)
        // by an attempt that will never record anything.
        Assert.False(await relay.Db.KeyExistsAsync(RedisKeys.Lease(id)));
        Assert.Equal(DeliveryStates.Queued, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State));
        Assert.Equal(1, (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount);
    }

    [Fact]
    public async Task Stop_GraceRunsOutMidRetry_TheRetryIsDueAgainAtOnceAndNotCountedAsACrash()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:ShutdownGraceSeconds"] = "0";
            c["Dispatcher:RequestTimeoutSeconds"] = "15";
        });
        // The first attempt gets a 503 (a retry, due within a second); the retry's POST then takes 5 s.
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 503 }, new { status = 200, delayMs = 5000 } } });
        var id = await DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(20), "the retry's POST is in flight");
        Assert.True(await relay.Db.KeyExistsAsync(RedisKeys.Lease(id)));

        await relay.StopDispatcherAsync(relay.Dispatcher);

        // Claiming it from the schedule had pushed its due time a lease ahead and counted a claim: both undone.
        Assert.False(await relay.Db.KeyExistsAsync(RedisKeys.Lease(id)));
        var due = await relay.Db.SortedSetScoreAsync(RedisKeys.RetrySchedule, id);
        Assert.NotNull(due);
        Assert.True(due <= DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), $"due at {due}, after now");
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.RetryClaims, id));
    }

    [Fact]
    public async Task Stop_WhileAnAttemptRetriesItsBegin_StopsRetryingAndGivesTheEntryBackUnposted()
    {
        // An attempt begun before the stop, whose Begin rides out a Redis error, must not POST once the stop is
        // signalled (the grace could cut that POST short after Azure got it), nor go on retrying: its backoff
        // (15.6 s in all) would outlast the grace.
        await using var relay = await Relay.StartAsync();
        var dispatcher = relay.Dispatcher;
        var entry = new DeliveryEntry("d_" + Guid.NewGuid().ToString("N"), TestRuns.Org, TestRuns.Webhook, TestRuns.Body(TestRuns.NewRunId()),
            "k-" + Guid.NewGuid().ToString("N"), null, DateTimeOffset.UtcNow, null, null);
        // A lease key of the wrong type: every Begin try fails (WRONGTYPE) and is retried after a backoff.
        await relay.Db.HashSetAsync(RedisKeys.Lease(entry.DeliveryId), "damaged", 1);
        await relay.Db.StreamAddAsync(RedisKeys.Stream, entry.ToStreamFields());
        await relay.Db.PublishAsync(RedisChannel.Literal(RedisKeys.WakeChannel), "test");
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains("[2007]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), "a Begin try failed");

        await relay.StopDispatcherAsync(dispatcher);

        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        // Given back at the signal, not after the backoff ran out (which logs 2106, "failed unexpectedly").
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2008]", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2106]", StringComparison.Ordinal));
        Assert.Equal(1, (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount);
    }

    [Fact]
    public async Task Stop_WhileAFeedingRoundWaitsOnRedis_StartsNoPost()
    {
        // A round of reads under way at the stop used to go on to XREADGROUP and POST what it read after SIGTERM.
        // Its own Redis: the pause below holds every client's writes.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:PollIntervalSeconds"] = "60", redisConnection: redis.ConnectionString);
        await DeliveryOutcomeTests.WaitForStateAsync(relay, await DeliveryOutcomeTests.SendAsync(relay), DeliveryStates.Delivered);
        // Idle in its wait: each round of reads ends with an XREADGROUP, which resets the consumer's idle time.
        await Eventually.HoldsAsync(async () => (await relay.Db.StreamConsumerInfoAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup))
            .All(c => c.IdleTimeInMilliseconds > 500), TimeSpan.FromSeconds(10), "the Dispatcher waits for work");
        var entry = new DeliveryEntry("d_" + Guid.NewGuid().ToString("N"), TestRuns.Org, TestRuns.Webhook, TestRuns.Body(TestRuns.NewRunId()),
            "k-" + Guid.NewGuid().ToString("N"), null, DateTimeOffset.UtcNow, null, null);
        // Queued without the wake-up message: the idle Dispatcher does not see it (its poll is a minute away).
        await relay.Db.StreamAddAsync(RedisKeys.Stream, entry.ToStreamFields());

        // Wake it, and hold the round's next write (a claim script or XREADGROUP) in a pause of Redis's writes, ended by
        // hand once the stop is under way (a pause timed to outlast the stop could run out first on a loaded machine).
        // One transaction: in a batch the two could reach Redis apart (seen under load), and the woken round read and
        // POSTed the entry before the pause began. (The wake cannot follow the pause: PUBLISH is held by it too.)
        var transaction = relay.Db.CreateTransaction();
        var woken = transaction.PublishAsync(RedisChannel.Literal(RedisKeys.WakeChannel), "test");
        var paused = transaction.ExecuteAsync("CLIENT", "PAUSE", "30000", "WRITE");
        Assert.True(await transaction.ExecuteAsync());
        await Task.WhenAll(woken, paused);
        // Time for the woken round to reach its held write; it cannot get past it.
        await Task.Delay(700);
        var dispatcher = relay.Dispatcher;
        var stopAt = DateTimeOffset.UtcNow;
        var stopping = relay.StopDispatcherAsync(dispatcher);
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains("[2107]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), "the stop is under way");
        await relay.Db.ExecuteAsync("CLIENT", "UNPAUSE");
        await stopping;

        var posted = await relay.EmulatorApi.RequestsAsync();
        Assert.True(posted.Count == 1, $"{posted.Count} POSTs, expected only the warm-up run's; the stop began at {stopAt:HH:mm:ss.fff}, "
            + $"the POSTs came at {string.Join(", ", posted.Select(p => p.ReceivedAt.ToString("HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture)))}");
        // Nothing more is read after the signal; an XREADGROUP already sent returns the entry, which is then left
        // pending for the other Dispatchers without a POST.
        var pending = (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount;
        Assert.True(pending == 0 || dispatcher.Logs.Lines.Any(l => l.Contains("[2008]", StringComparison.Ordinal)),
            "read after the stop, and neither left unread nor given back unposted");
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }
}

[Collection(HeavyTests.Name)]
public class SigtermTests

{
    [Fact]
    public async Task Sigterm_DispatcherProcess_FinishesInFlightPostsAndExits_RestIsDeliveredOnceByAnother()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 5000 });
        var config = new Dictionary<string, string?>(relay.Config)
        {
            ["Dispatcher:MaxConcurrency"] = "2",
            ["Dispatcher:RequestTimeoutSeconds"] = "15",
            ["Dispatcher:ClaimMarginSeconds"] = "1",
            ["Dispatcher:ClaimIntervalSeconds"] = "0.2",
            ["Dispatcher:FinishRetrySeconds"] = "1",
        };
        var ids = new List<string>();
        for (var i = 0; i < 4; i++)
        {
            ids.Add(await DeliveryOutcomeTests.SendAsync(relay));
        }

        using (var dispatcher = ServiceProcess.StartDispatcher(config))
        {
            await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(30), "two POSTs in flight");
            Assert.True(dispatcher.Terminate(TimeSpan.FromSeconds(20)), "the Dispatcher exits after SIGTERM within its grace period");
        }

        var states = new List<string?>();
        foreach (var id in ids)
        {
            states.Add(await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State));
        }
        // Every POST under way at SIGTERM was allowed to finish and was recorded; the rest were never started.
        var posted = (await relay.EmulatorApi.RequestsAsync()).Count;
        Assert.InRange(posted, 2, 3);
        Assert.Equal(posted, states.Count(s => s == DeliveryStates.Delivered));
        Assert.Equal(4 - posted, states.Count(s => s == DeliveryStates.Queued));

        await relay.AddDispatcherAsync(c => c["Dispatcher:ClaimMarginSeconds"] = "1");
        foreach (var id in ids)
        {
            await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State) == DeliveryStates.Delivered,
                TimeSpan.FromSeconds(60), $"{id} delivered");
        }
        Assert.Equal(4, (await relay.EmulatorApi.RequestsAsync()).Count);
    }
}
