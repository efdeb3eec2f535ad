using System.Net;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace PortAzure.Tests.Dispatcher;

// Alone: four senders in a loop and a Redis restart would starve the small timing-bound tests.
[Collection(HeavyTests.Name)]
public class RedisRestartTests(ITestOutputHelper output)
{
    [Fact]
    public async Task RedisKilledAndRestartedWithAof_MidStream_EveryAcceptedRunIsDeliveredOnce()
    {
        await using var redis = await RedisServer.StartAsync("always");
        // An entry whose XREADGROUP reply the kill lost waits in the pending list for timeout + margin: 6 s here,
        // not the 45 s (timeout 30 s + margin) that left the 60 s wait below only a few seconds to spare.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "5";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.5";
            // Longer than the outage below can last (5 s, up to 30 s more until a call is refused, the restart), so that
            // a run posted twice is a defect, not the documented outage past the finish window. A finish that fails for
            // good leaves its entry pending until the lease ends (5 + 45 + 0.5 s) and is then posted again: inside the
            // wait for a quiet relay below, so the "none twice" check sees it.
            c["Dispatcher:FinishRetrySeconds"] = "45";
            // Reports to Port on too: each delivered run's outcome reaches Port once, through the same outage.
            c["Port:ClientId"] = "relay-client";
        }, redisConnection: redis.ConnectionString);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 10 });
        // Warm up first, so that every sender is under way before Redis goes.
        await DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "the first run is delivered");
        var accepted = new System.Collections.Concurrent.ConcurrentBag<string>();
        var refused = 0;
        using var stop = new CancellationTokenSource();

        // Four Port callers keep sending while Redis is killed (SIGKILL) and started again on its AOF.
        var senders = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var runId = TestRuns.NewRunId();
                using var response = await relay.SendRunAsync(TestRuns.Body(runId));
                if (response.StatusCode == HttpStatusCode.Accepted)
                {
                    accepted.Add(runId);
                }
                else
                {
                    Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
                    Interlocked.Increment(ref refused);
                }
            }
        })).ToList();
        await Task.Delay(1500);
        redis.Kill();
        var outage = System.Diagnostics.Stopwatch.StartNew();
        // Down longer than the test connection's asyncTimeout (3 s) plus the client's ~1 s timeout sweep: a call
        // that waits in the client's backlog is refused before Redis is back. With 2 s the client could reconnect
        // (every 0.5-2 s) in time to store every waiting call, and no 503 proved the outage (seen once in CI).
        // Down at least that long, and until the Ingress has refused a call (the proof of the outage asserted below).
        await Task.Delay(5000);
        try
        {
            await Eventually.HoldsAsync(() => Task.FromResult(Volatile.Read(ref refused) > 0), TimeSpan.FromSeconds(30), () => $"a call refused while Redis is down (accepted {accepted.Count}; senders {string.Join(", ", senders.Select(t => t.Exception?.InnerException?.Message ?? t.Status.ToString()))})");
        }
        finally
        {
            // The Redis client's own lines and the expected refusals aside: what else went wrong (a 500's exception).
            foreach (var line in relay.Ingress.Logs.Lines.Where(l => (l.StartsWith("Warn", StringComparison.Ordinal) || l.StartsWith("Err", StringComparison.Ordinal))
                && !l.Contains("StackExchange.Redis.ConnectionMultiplexer", StringComparison.Ordinal) && !l.Contains("[1004]", StringComparison.Ordinal)).Take(5))
            {
                output.WriteLine("Ingress: " + line[..Math.Min(1500, line.Length)]);
            }
        }
        await redis.StartProcessAsync();
        outage.Stop();
        await Task.Delay(1500);
        await stop.CancelAsync();
        await Task.WhenAll(senders);
        output.WriteLine($"accepted {accepted.Count}, refused while Redis was down {refused}");
        Assert.True(refused > 0, "the Ingress noticed Redis was down");
        Assert.True(accepted.Count > 50, "runs were accepted around the outage");

        try
        {
            await Eventually.HoldsAsync(async () =>
            {
                var delivered = (await relay.EmulatorApi.DeliveredAsync()).Select(r => r.Header("X-Port-Run-Id")).ToHashSet();
                return accepted.All(delivered.Contains);
            }, TimeSpan.FromSeconds(60), "every accepted run is delivered");
        }
        finally
        {
            var delivered = (await relay.EmulatorApi.DeliveredAsync()).Select(r => r.Header("X-Port-Run-Id")).ToHashSet();
            foreach (var missing in accepted.Where(a => !delivered.Contains(a)).Take(5))
            {
                var ids = await relay.Db.SetMembersAsync(RedisKeys.RunIndex(missing));
                output.WriteLine($"missing {missing}: ids {string.Join(",", ids)}");
                foreach (var id in ids)
                {
                    var hash = await relay.Db.HashGetAllAsync(RedisKeys.Delivery(id!));
                    output.WriteLine("  " + string.Join(" ", hash.Where(h => h.Name != "body").Select(h => $"{h.Name}={h.Value}")));
                }
            }
            output.WriteLine($"stream {await relay.Db.StreamLengthAsync(RedisKeys.Stream)} retries {await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule)} dead {await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters)}");
            // The client's own reconnect lines aside (one per try, they filled this window): what the Dispatcher did.
            foreach (var line in relay.Dispatcher.Logs.Lines.Where(l => (l.StartsWith("Warn", StringComparison.Ordinal) || l.StartsWith("Err", StringComparison.Ordinal))
                && !l.Contains("StackExchange.Redis.ConnectionMultiplexer", StringComparison.Ordinal)).Take(15))
            {
                output.WriteLine(line[..Math.Min(1200, line.Length)]);
            }
        }
        var errorLines = relay.Dispatcher.Logs.Lines.Count(l => l.Contains("[2103]", StringComparison.Ordinal));
        output.WriteLine($"Dispatcher Redis error log lines during the outage: {errorLines}");
        Assert.True(errorLines < 200, $"{errorLines} error lines: the delivery loop spun instead of backing off");

        // None twice: once nothing is queued, pending or scheduled, nothing can be posted again. (Runs refused with "may
        // or may not be queued" can be delivered too; each at most once as well.)
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
            && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0
            && await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule) == 0, TimeSpan.FromSeconds(90), "nothing is left queued, pending or scheduled");
        var twice = (await relay.EmulatorApi.RequestsAsync()).GroupBy(r => r.Header("X-Port-Run-Id")).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        foreach (var runId in twice.Take(3))
        {
            foreach (var id in await relay.Db.SetMembersAsync(RedisKeys.RunIndex(runId!)))
            {
                var hash = await relay.Db.HashGetAllAsync(RedisKeys.Delivery(id!));
                output.WriteLine($"twice {runId}: " + string.Join(" ", hash.Where(h => h.Name != "body").Select(h => $"{h.Name}={h.Value}")));
                output.WriteLine("  attempts: " + string.Join(" | ", await relay.Db.ListRangeAsync(RedisKeys.Attempts(id!))));
                foreach (var line in relay.Dispatcher.Logs.Lines.Where(l => l.Contains(id!, StringComparison.Ordinal)).Take(10))
                {
                    output.WriteLine("  " + line[..Math.Min(1200, line.Length)]);
                }
            }
        }
        Assert.True(twice.Count == 0, $"{twice.Count} runs delivered more than once, e.g. {string.Join(", ", twice.Take(5))}");

        // Every delivered run's outcome reaches Port, once: its report was written by the finish that recorded the
        // delivery, and the reporter's reads and removals ride out the outage as the delivery's steps do.
        var deliveredRuns = (await relay.EmulatorApi.DeliveredAsync()).Select(r => r.Header("X-Port-Run-Id")!).ToHashSet();
        await Eventually.HoldsAsync(async () =>
        {
            var reported = (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.RunId is not null && c.StatusCode == 201).Select(c => c.RunId!).ToHashSet();
            return deliveredRuns.All(reported.Contains);
        }, TimeSpan.FromSeconds(60), "every delivered run reported to Port");
        var reports = (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.RunId is not null && c.StatusCode == 201).GroupBy(c => c.RunId!)
            .Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        output.WriteLine($"Redis was down {outage.Elapsed.TotalSeconds:F1} s; runs reported more than once: {reports.Count}");
        // Once only if the outage was shorter than a sent report's removal keeps trying (about 15 s of waits): past that
        // the report stays pending and is sent again, by design ("at worst one more log line in Port", README).
        if (outage.Elapsed < TimeSpan.FromSeconds(12))
        {
            Assert.True(reports.Count == 0, $"{reports.Count} runs reported to Port more than once, e.g. {string.Join(", ", reports.Take(5))}");
        }
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
    }

    [Fact]
    public async Task RedisGoneAfterAzureAnswered_LongerThanTimeoutPlusMargin_TheRunIsPostedOnce()
    {
        // Redis dies while Azure handles the POST and stays away longer than timeout + margin (6 s) but
        // inside the finish window (20 s). The attempt's lease covers the window, so a replica that reclaims
        // the entry when Redis is back finds it held and does not post the run a second time.
        await using var redis = await RedisServer.StartAsync("always");
        await using var relay = await Relay.StartAsync(c =>
        {
            // Well above the emulator's 1.5 s: a timed-out POST would be retried, a second POST for another reason.
            c["Dispatcher:RequestTimeoutSeconds"] = "5";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
            c["Dispatcher:FinishRetrySeconds"] = "20";
        }, redisConnection: redis.ConnectionString);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 1500 });
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        // The emulator records a request when it arrives, then waits 1.5 s before answering 200.
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "the POST reached Azure");

        redis.Kill();
        await Task.Delay(TimeSpan.FromSeconds(8));
        await redis.StartProcessAsync();
        // A second replica, started only now, reclaims at once: the entry has been idle for more than 6 s.
        await relay.AddDispatcherAsync();

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(30), "the first attempt records its result");
        // Give a reclaiming replica time to post it again, were it going to.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount);
    }

    [Fact]
    public async Task ConsumerGroupDeleted_WhileRunning_IsRecreatedAndDeliveryResumes()
    {
        await using var relay = await Relay.StartAsync();
        await DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "first run delivered");

        await relay.Db.StreamDeleteConsumerGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup);
        await DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(20), "delivery resumes after NOGROUP");
    }
}

[Collection(HeavyTests.Name)]
public class RedisPersistenceTests
{
    [Fact]
    public async Task RedisSigkilledUnderAppendfsyncAlways_AfterAThousandAcceptedRuns_EveryOneIsDelivered()
    {
        await using var redis = await RedisServer.StartAsync("always");
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        var runIds = Enumerable.Range(0, 1000).Select(_ => TestRuns.NewRunId()).ToList();
        await relay.SendAllAcceptedAsync(runIds);

        redis.Kill();
        await redis.StartProcessAsync();
        await relay.AddDispatcherAsync(c => c["Dispatcher:MaxConcurrency"] = "32");

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 1000, TimeSpan.FromSeconds(90), "1,000 runs delivered");
        await Task.Delay(500);
        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(runIds.Order(), requests.Select(r => r.Header("X-Port-Run-Id")!).Order());
    }
}
