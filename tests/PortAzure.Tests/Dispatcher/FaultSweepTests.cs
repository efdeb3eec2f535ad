using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace PortAzure.Tests.Dispatcher;

/// <summary>
/// One run at a time, the Dispatcher's Nth Redis call after it is sent fails as a dying connection fails it (N = 1, 2,
/// ...), whichever call that is: every run still ends as Azure's answers say (delivered, or dead-lettered after a 400),
/// and is posted once (twice where Azure answered the first 503). A kill of Redis hits whatever call is
/// under way (RedisRestartTests); this makes every one of a delivery's calls the one hit, in turn.
/// </summary>
[Collection(HeavyTests.Name)]
public class FaultSweepTests(ITestOutputHelper output)
{
    private const string Begin = "begin";
    private const string Finish = "finish";

    /// <param name="firstAnswer">Azure's answer to each run's first POST: 200 (delivered), 503 (retried, then 200) or 400 (dead-lettered).</param>
    [Theory]
    [InlineData(ScriptFault.NotRun, 200)]
    [InlineData(ScriptFault.ReplyLost, 200)]
    [InlineData(ScriptFault.NotRun, 503)]
    [InlineData(ScriptFault.ReplyLost, 503)]
    [InlineData(ScriptFault.NotRun, 400)]
    [InlineData(ScriptFault.ReplyLost, 400)]
    public async Task Delivery_EachRedisCallFailsInTurn_EveryRunIsPostedOnce(ScriptFault fault, int firstAnswer)
    {
        // A delivery makes about 7 calls (read, claim of due retries, begin, finish); one retried first (503) about 12.
        var retried = firstAnswer == 503;
        var calls = retried ? 13 : 8;
        // Its own Redis, for its 3 s timeouts: the finish's window is the lease less one timeout, and the lease short.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        Func<RedisCall, int, bool>? plan = null;
        var seen = 0;
        var hit = new List<string>();
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            // Lease: timeout 2 + finish 5 + margin/2; a read whose reply was lost is reclaimed after 3 s idle.
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:FinishRetrySeconds"] = "5";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.5";
        }, services => FaultyRedis.FailCalls(services, call =>
        {
            if (Volatile.Read(ref plan) is not { } current || !current(call, Interlocked.Increment(ref seen)))
            {
                return ScriptFault.None;
            }
            lock (hit)
            {
                hit.Add(Kind(call));
            }
            return fault;
        }));

        // Read under the lock the fault callback writes under: the Dispatcher's threads add to it.
        string[] Hits()
        {
            lock (hit)
            {
                return [.. hit];
            }
        }

        var runs = new List<string>();
        // One run, failing the calls the plan picks (each call and how many there have been since the run was sent).
        async Task RoundAsync(string name, Func<RedisCall, int, bool> roundPlan)
        {
            if (firstAnswer != 200)
            {
                await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = firstAnswer } } });
            }
            var hitBefore = Hits().Length;
            Volatile.Write(ref seen, 0);
            Volatile.Write(ref plan, roundPlan);
            var runId = TestRuns.NewRunId();
            string deliveryId;
            using (var accepted = await relay.SendRunAsync(TestRuns.Body(runId)))
            {
                accepted.EnsureSuccessStatusCode();
                deliveryId = (await accepted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;
            }
            runs.Add(runId);
            try
            {
                await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State)
                        == (firstAnswer == 400 ? DeliveryStates.DeadLettered : DeliveryStates.Delivered)
                    && await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
                    && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0
                    && await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule) == 0,
                    TimeSpan.FromSeconds(30), $"{name}: the run ended and nothing is left queued, pending or scheduled");
            }
            finally
            {
                Volatile.Write(ref plan, null);
                var hits = Hits();
                output.WriteLine($"{name}: {(hits.Length > hitBefore ? hits[^1] : "(none failed)")}");
                foreach (var line in dispatcher.Logs.Lines.Where(l => l.StartsWith("Err", StringComparison.Ordinal)).Take(3))
                {
                    output.WriteLine("  " + line[..Math.Min(line.Length, 600)]);
                }
            }
        }

        for (var n = 1; n <= calls; n++)
        {
            var at = n;
            await RoundAsync($"call {n}", (_, count) => count == at);
        }
        // The steps that decide whether a run is posted twice, in case a slow moment moved them past the sweep: the first
        // of each, alone.
        foreach (var missed in new[] { Begin, Finish }.Where(k => !Hits().Contains(k)).ToList())
        {
            var done = 0;
            await RoundAsync($"first {missed}", (call, _) => Kind(call) == missed && Interlocked.Exchange(ref done, 1) == 0);
        }
        Assert.Contains(Begin, Hits());
        Assert.Contains(Finish, Hits());

        // Each run was waited for until nothing was left queued, pending or scheduled: nothing can post one again. (A finish
        // given up leaves its entry pending until its lease, 7.5 s, runs out, and the wait above until it is posted again.)
        var posts = (await relay.EmulatorApi.RequestsAsync()).GroupBy(r => r.Header("X-Port-Run-Id")).ToDictionary(g => g.Key!, g => g.Count());
        var delivered = (await relay.EmulatorApi.DeliveredAsync()).GroupBy(r => r.Header("X-Port-Run-Id")).ToDictionary(g => g.Key!, g => g.Count());
        Assert.All(runs, r => Assert.Equal(retried ? 2 : 1, posts.GetValueOrDefault(r)));
        Assert.All(runs, r => Assert.Equal(firstAnswer == 400 ? 0 : 1, delivered.GetValueOrDefault(r)));
        // A dead letter once each, none left behind by a finish run twice.
        Assert.Equal(firstAnswer == 400 ? runs.Count : 0, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2106]", StringComparison.Ordinal));
    }

    /// <summary>The begin and finish scripts by name, else the method (a script by its last line).</summary>
    private static string Kind(RedisCall call) => call.Script switch
    {
        { } s when DispatcherScripts.IsBegin(s) => Begin,
        { } s when DispatcherScripts.IsFinish(s) => Finish,
        { } s => $"{call.Method} {s.Trim().Split('\n')[^1].Trim()}",
        _ => call.Method,
    };
}
