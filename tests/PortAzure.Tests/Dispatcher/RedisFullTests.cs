using System.Diagnostics;
using System.Net;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The Dispatcher against a Redis at <c>maxmemory</c> with <c>noeviction</c>, as deploy.md asks for.</summary>
public class RedisFullTests
{
    private const string RedisFullLine = "[2113]";

    [Fact]
    public async Task Deliver_RedisFillsWhileARunWaitsForASlot_ItIsNotPostedAndTheLineSaysFull_DeliveredOnceThereIsRoom()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:MaxConcurrency"] = "1";
            c["Dispatcher:RequestTimeoutSeconds"] = "10";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.5";
        }, redisConnection: redis.ConnectionString);
        // The first run holds the only slot for 5 s, so that the second is still queued when Redis fills on a slow
        // machine, well inside the request timeout (a timed-out POST's retry would be refused a claim, and no reclaim
        // would follow: the claim of due retries comes first).
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 5000 });
        await SendAcceptedAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "the first run is posted");
        await SendAcceptedAsync(relay);
        await RedisServer.FillAsync(relay.Db);

        // The second run's begin is refused and tried again for 15.6 s (DeliveryProcessor.BeginBackoff) before the line.
        await WaitForTheLineAsync(relay.Dispatcher);
        // Its entry, left pending, comes back to this Dispatcher in a reclaim: not a stopped consumer's (2104), but its own
        // (Debug 2112).
        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2104]", StringComparison.Ordinal)
            || l.Contains("[2112]", StringComparison.Ordinal))), TimeSpan.FromSeconds(40), "the second run's entry is reclaimed");

        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2106]", StringComparison.Ordinal));
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2104]", StringComparison.Ordinal));
        // Each refused try is a Debug line, not a warning that Redis failed.
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2007]", StringComparison.Ordinal));
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2010]", StringComparison.Ordinal) && l.StartsWith("Debug", StringComparison.Ordinal));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        // The first run's finish went through (its first write needs no memory): only the second is left in the stream.
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));

        await relay.Db.ExecuteAsync("CONFIG", "SET", "maxmemory", "0");

        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0, TimeSpan.FromSeconds(60),
            "the second run is delivered once Redis has room");
        var posted = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(2, posted.Count);
        Assert.Equal(2, posted.Select(r => r.Header("X-Port-Run-Id")).Distinct().Count());
    }

    [Fact]
    public async Task Reclaim_RedisFullAndAnotherLiveDispatcherRefusedTheBegin_NotReportedAsACrash()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        // The first Dispatcher (A) reclaims nothing after its start, so that only the second (B) can take A's entry.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:MaxConcurrency"] = "1";
            c["Dispatcher:RequestTimeoutSeconds"] = "20";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "600";
        }, redisConnection: redis.ConnectionString);
        // A's POST holds its only slot 12 s, B's 16 s (B takes the second run, before Redis fills): the third run, queued
        // while Redis fills, is A's.
        var aHolds = TimeSpan.FromSeconds(12);
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 200, delayMs = 12_000 }, new { status = 200, delayMs = 16_000 } } });
        await SendAcceptedAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "A posts the first run");
        var aPosted = Stopwatch.StartNew();
        var b = await relay.AddDispatcherAsync(c => c["Dispatcher:ClaimIntervalSeconds"] = "0.5");
        await SendAcceptedAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(20), "B posts the second run");
        await SendAcceptedAsync(relay);
        await RedisServer.FillAsync(relay.Db);
        // A slow machine would otherwise fail below for a reason the assertions do not name.
        Assert.True(aPosted.Elapsed < aHolds - TimeSpan.FromSeconds(1),
            $"the setup took {aPosted.Elapsed.TotalSeconds:F1} s: A's slot came free before Redis was full, and A may have delivered the third run");

        // A's begin of the third run is refused for 15.6 s; the entry, pending with A, is B's to reclaim once idle 21 s.
        await WaitForTheLineAsync(relay.Dispatcher);
        await Eventually.HoldsAsync(() => Task.FromResult(b.Logs.Lines.Any(l => l.Contains("[2104]", StringComparison.Ordinal)
            || l.Contains("[2114]", StringComparison.Ordinal))), TimeSpan.FromSeconds(40), "B reclaims the third run's entry");

        Assert.DoesNotContain(b.Logs.Lines, l => l.Contains("[2104]", StringComparison.Ordinal));
        Assert.Contains(b.Logs.Lines, l => l.Contains("[2114]", StringComparison.Ordinal) && l.StartsWith("Info", StringComparison.Ordinal));
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2104]", StringComparison.Ordinal));
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);

        await relay.Db.ExecuteAsync("CONFIG", "SET", "maxmemory", "0");

        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0, TimeSpan.FromSeconds(60),
            "the third run is delivered once Redis has room");
        var posted = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(3, posted.Count);
        Assert.Equal(3, posted.Select(r => r.Header("X-Port-Run-Id")).Distinct().Count());
    }

    [Fact]
    public async Task Start_RedisFullNoGroupsYet_TheLineSaysFullNotUnavailable_DeliversOnceThereIsRoom()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0, redisConnection: redis.ConnectionString);
        await SendAcceptedAsync(relay);
        await RedisServer.FillAsync(relay.Db);

        var dispatcher = await relay.AddDispatcherAsync();

        // A first start: no group yet, and a full Redis refuses to make one.
        await WaitForTheLineAsync(dispatcher);
        Assert.Empty(await relay.Db.StreamGroupInfoAsync(RedisKeys.Stream));
        // The Port reporter's group is refused too: its own throttled line, not a warning per try.
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains("[2220]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(30), "the Port reporter says Redis is full");
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2205]", StringComparison.Ordinal));
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());

        await relay.Db.ExecuteAsync("CONFIG", "SET", "maxmemory", "0");

        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0, TimeSpan.FromSeconds(60),
            "the run is delivered once Redis has room");
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
    }

    [Fact]
    public async Task StopAndStart_RedisFullAndTheGroupsExist_HandsTheUnsentReportBackJoinsTheGroupsAndSendsIt()
    {
        // Redis refuses XGROUP CREATE while full even for a group that exists: a Dispatcher restarted during the spell
        // (a rollout, a crash) must join the groups anyway, or the reports queued for Port wait until there is room.
        // And the stop must hand its unsent report back (an XADD), or it waits for the takeover (15 min).
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", redisConnection: redis.ConnectionString);
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var runId = TestRuns.NewRunId();
        using (var accepted = await relay.SendRunAsync(TestRuns.Body(runId)))
        {
            Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        }
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1 && await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 1,
            TimeSpan.FromSeconds(20), "the run is delivered and its report queued for Port");
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0, TimeSpan.FromSeconds(10),
            "a first, failing call to Port: the report is read, and pending for the reporter");
        await RedisServer.FillAsync(relay.Db);
        var stopped = relay.Dispatcher;
        await relay.StopDispatcherAsync(stopped);
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Contains(stopped.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));
        Assert.DoesNotContain(stopped.Logs.Lines, l => l.Contains("[2220]", StringComparison.Ordinal));
        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });

        var dispatcher = await relay.AddDispatcherAsync(c => c["Dispatcher:ConsumerName"] = "restarted");

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(60), () => "the queued report is sent to Port while Redis is full; the Dispatcher's warnings and errors:\n"
                + string.Join("\n", dispatcher.Logs.Lines.Where(l => l.StartsWith("Warn", StringComparison.Ordinal) || l.StartsWith("Err", StringComparison.Ordinal)).Take(5)));
        // Removed once sent (its removal's first write, an XACK, needs no memory): the report frees what it held.
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(20),
            "the sent report is removed from its stream while Redis is full");
        // The delivery worker joined its group too: its first read made it a consumer.
        await Eventually.HoldsAsync(async () => (await relay.Db.StreamConsumerInfoAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).Any(c => c.Name == "restarted"),
            TimeSpan.FromSeconds(20), "the new Dispatcher reads the runs' stream through the existing group");
        Assert.True(await RedisMemory.IsFullAsync(relay.Db.Multiplexer));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2220]", StringComparison.Ordinal) || l.Contains(RedisFullLine, StringComparison.Ordinal)
            || l.Contains("[2103]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task MalformedEntry_RedisFull_IsRemovedWithoutAnErrorLine()
    {
        // Its removal (XACK, XDEL) needs no memory, but Redis over maxmemory refuses to queue any command in a MULTI: as a
        // transaction it failed with EXECABORT, logged as a Redis error, and stayed pending.
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(dispatchers: 0, redisConnection: redis.ConnectionString);
        await relay.Db.StreamCreateConsumerGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "0-0", createStream: true);
        await relay.Db.StreamAddAsync(RedisKeys.Stream, [new("id", "d_x"), new("org", "contoso"), new("body", "{}")]);
        await RedisServer.FillAsync(relay.Db);

        var dispatcher = await relay.AddDispatcherAsync();

        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
            && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0,
            TimeSpan.FromSeconds(30), () => "the malformed entry is gone, nothing pending; the Dispatcher's warnings and errors:\n"
                + string.Join("\n", dispatcher.Logs.Lines.Where(l => l.StartsWith("Warn", StringComparison.Ordinal) || l.StartsWith("Err", StringComparison.Ordinal)).Take(5)));
        Assert.True(await RedisMemory.IsFullAsync(relay.Db.Multiplexer));
        Assert.Single(dispatcher.Logs.Lines, l => l.Contains("[2105]", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2103]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Start_StaleConsumerRemovalRefusedForMemory_JoinsTheGroupsAnyway()
    {
        // Redis 6.2 (none here to run) refuses XGROUP DELCONSUMER on a full Redis, where 7 lets it through: the refusal is
        // made here. Thrown, it kept the Dispatcher from reading runs or sending the reports queued for Port.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var refused = 0;
        var dispatcher = await relay.AddDispatcherAsync(services: services => FaultyRedis.FailScripts(services, script =>
        {
            if (!script.Contains("DELCONSUMER", StringComparison.Ordinal))
            {
                return ScriptFault.None;
            }
            Interlocked.Increment(ref refused);
            return ScriptFault.OutOfMemory;
        }));
        var runId = TestRuns.NewRunId();

        using (var accepted = await relay.SendRunAsync(TestRuns.Body(runId)))
        {
            Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        }

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(30), "the run is delivered and reported to Port");
        // Both groups' removals were refused: the delivery worker's and the Port reporter's.
        Assert.True(Volatile.Read(ref refused) >= 2);
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains(RedisFullLine, StringComparison.Ordinal) || l.Contains("[2220]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Discard_RedisFull_TheDeadLetterIsDiscardedAndItsBodyFreed()
    {
        // deploy.md tells an operator facing a full Redis to discard dead letters: that must work while it is full.
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString);
        var id = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, id, 1, TestRuns.Body(TestRuns.NewRunId()));
        await RedisServer.FillAsync(relay.Db);

        using var discard = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{id}");
        using var discarded = await relay.Ingress.Client.SendAsync(discard);

        Assert.True(discarded.IsSuccessStatusCode, $"DELETE answered {(int)discarded.StatusCode}: {await discarded.Content.ReadAsStringAsync()}");
        Assert.Null(await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
        Assert.Equal(DeliveryStates.Discarded, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State));
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(id), DeliveryRecord.Body));
    }

    [Fact]
    public async Task Replay_RedisFull_TheRunIsQueuedAndDeliveredOnceThereIsRoom()
    {
        // deploy.md says a replay goes through on a full Redis (its first write needs no memory) but frees nothing.
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString);
        var id = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, id, 1, TestRuns.Body(TestRuns.NewRunId()));
        await RedisServer.FillAsync(relay.Db);

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{id}/replay");
        using var replayed = await relay.Ingress.Client.SendAsync(replay);

        Assert.True(replayed.StatusCode == HttpStatusCode.Accepted, $"replay answered {(int)replayed.StatusCode}: {await replayed.Content.ReadAsStringAsync()}");
        Assert.Null(await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        await WaitForTheLineAsync(relay.Dispatcher);
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());

        await relay.Db.ExecuteAsync("CONFIG", "SET", "maxmemory", "0");

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(60), "the replayed run is delivered once Redis has room");
        Assert.Equal(id, Assert.Single(await relay.EmulatorApi.RequestsAsync()).Header("Idempotency-Key"));
    }

    [Fact]
    public async Task Health_RedisFull_BothServicesDegradedThenHealthyOnceThereIsRoom()
    {
        // Nothing queued: the Dispatcher's backlog check has nothing to say, and Redis answers its ping.
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString);
        Assert.Equal(["Healthy", "Healthy"], await HealthAsync(relay));

        await RedisServer.FillAsync(relay.Db);

        Assert.Equal(["Degraded", "Degraded"], await HealthAsync(relay));
        using var refused = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);

        await relay.Db.ExecuteAsync("CONFIG", "SET", "maxmemory", "0");

        Assert.Equal(["Healthy", "Healthy"], await HealthAsync(relay));
    }

    /// <summary>The Ingress's <c>/health</c>, then the Dispatcher's: a status word each, answered 200 for both.</summary>
    private static async Task<string[]> HealthAsync(Relay relay)
    {
        var words = new List<string>();
        foreach (var client in new[] { relay.Ingress.Client, relay.Dispatcher.Client })
        {
            using var response = await client.GetAsync(new Uri("/health", UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            words.Add(await response.Content.ReadAsStringAsync());
        }
        return [.. words];
    }

    private static async Task SendAcceptedAsync(Relay relay)
    {
        using var accepted = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
    }

    private static async Task WaitForTheLineAsync(TestHost dispatcher)
    {
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains(RedisFullLine, StringComparison.Ordinal))),
            TimeSpan.FromSeconds(60), () => "the Dispatcher says Redis is full; its warnings and errors:\n" + string.Join("\n",
                dispatcher.Logs.Lines.Where(l => l.StartsWith("Warn", StringComparison.Ordinal) || l.StartsWith("Err", StringComparison.Ordinal)).Take(5)
                    .Select(l => l[..Math.Min(1500, l.Length)])));
        var line = dispatcher.Logs.Lines.First(l => l.Contains(RedisFullLine, StringComparison.Ordinal));
        Assert.StartsWith("Error", line, StringComparison.Ordinal);
        Assert.Contains("Redis is out of memory", line, StringComparison.Ordinal);
        Assert.Contains("OOM command not allowed", line, StringComparison.Ordinal);
    }
}
