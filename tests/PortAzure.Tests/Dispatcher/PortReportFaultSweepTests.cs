using Microsoft.Extensions.DependencyInjection;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using Xunit.Abstractions;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Dispatcher;

/// <summary>
/// The fault sweep of <see cref="FaultSweepTests"/>, on the report path: one run at a time, the Nth of the Dispatcher's
/// Redis calls that carry the run's Port report fails as a dying connection fails it (not run, or its reply lost). Counted
/// from the finish that writes the report (call 1; a retry of it counts too), then every call of the reporter (the calls on
/// <see cref="RedisKeys.PortReports"/>: the takeover of idle reports, the read, the touch after a wait, the acknowledgement
/// and removal, which also ends the report on its delivery's record), whatever the delivery worker does meanwhile (FaultSweepTests fails its calls). Every run's outcome still
/// reaches Port once, nothing is left pending in either stream, and the run is posted once.
/// </summary>
[Collection(HeavyTests.Name)]
public class PortReportFaultSweepTests(ITestOutputHelper output)
{
    private const string Finish = "finish";
    private const string Touch = "touch";
    private const string HandBack = "hand-back";
    private const string Remove = "remove";

    /// <summary>A round's choice of the calls to fail: the call, and how many counted calls there have been (1 for the finish).</summary>
    private delegate ScriptFault Plan(RedisCall call, int count);

    [Theory]
    [InlineData(ScriptFault.NotRun, false)]
    [InlineData(ScriptFault.ReplyLost, false)]
    [InlineData(ScriptFault.NotRun, true)]
    [InlineData(ScriptFault.ReplyLost, true)]
    public async Task Report_EachRedisCallFailsInTurn_EveryOutcomeIsReportedOnce(ScriptFault fault, bool portFailsFirst)
    {
        // Its own Redis, for its 3 s timeouts (as FaultSweepTests).
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", redisConnection: redis.ConnectionString, dispatchers: 0);
        Plan? plan = null;
        var counting = 0;
        var seen = 0;
        var counted = new List<string>();
        var failedKinds = new HashSet<string>(StringComparer.Ordinal);
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            // The delivery's lease as in FaultSweepTests (timeout 2 + finish 5 + margin/2).
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:FinishRetrySeconds"] = "5";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            // A crashed reporter's report is taken over 2 s after its read (the last round).
            c["Dispatcher:PortReportReclaimSeconds"] = "2";
            // The reporter's calls in a steady order: each round (0.4 s apart) a takeover then a read; a read at once after
            // a read that found a report; Port's 503 waits 1 s, between the second and third rounds after it.
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
            c["Dispatcher:PollIntervalSeconds"] = "0.4";
        }, services => FaultyRedis.FailCalls(services, call =>
        {
            if (Volatile.Read(ref plan) is not { } current)
            {
                return ScriptFault.None;
            }
            var kind = Kind(call);
            if (kind == Finish)
            {
                Volatile.Write(ref counting, 1);
            }
            else if (Volatile.Read(ref counting) == 0 || call.Key != RedisKeys.PortReports)
            {
                return ScriptFault.None;
            }
            var chosen = current(call, Interlocked.Increment(ref seen));
            lock (counted)
            {
                counted.Add((chosen == ScriptFault.None ? "" : "FAILED ") + Kind(call));
                if (chosen != ScriptFault.None)
                {
                    failedKinds.Add(kind);
                }
            }
            return chosen;
        }));

        // The token fetched and the reporters' group made: each run's report then makes one call to Port (two with a 503).
        var warmUp = TestRuns.NewRunId();
        await SendAsync(relay, warmUp);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == warmUp && c.StatusCode == 201),
            TimeSpan.FromSeconds(30), "the warm-up run reported");

        var runs = new List<string>();
        // One run, with its plan; whether any call failed.
        async Task<bool> RoundAsync(string name, Plan roundPlan)
        {
            if (portFailsFirst)
            {
                await relay.EmulatorApi.PortBehaviorAsync(new { failNext = 1, status = 503 });
            }
            lock (counted)
            {
                counted.Clear();
            }
            var linesBefore = dispatcher.Logs.Lines.Count;
            Volatile.Write(ref seen, 0);
            Volatile.Write(ref counting, 0);
            Volatile.Write(ref plan, roundPlan);
            var runId = TestRuns.NewRunId();
            var deliveryId = await SendAsync(relay, runId);
            runs.Add(runId);
            string[] calls;
            try
            {
                await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.DeliveredAsync()).Any(r => r.Header("X-Port-Run-Id") == runId)
                    && (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201)
                    && await NothingLeftAsync(relay),
                    TimeSpan.FromSeconds(30), $"{name}: the run delivered, reported, and nothing left queued, pending or scheduled");
                // Ended on its record, whichever call failed.
                Assert.Equal("sent", (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReport));
                Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));
            }
            finally
            {
                Volatile.Write(ref plan, null);
                lock (counted)
                {
                    calls = [.. counted];
                }
                var failed = calls.Where(c => c.StartsWith("FAILED", StringComparison.Ordinal)).ToList();
                output.WriteLine($"{name}: {(failed.Count > 0 ? string.Join("; ", failed) : "(none failed)")}");
                output.WriteLine($"  counted: {string.Join(" | ", calls.Take(14))}");
                foreach (var line in dispatcher.Logs.Lines.Skip(linesBefore)
                    .Where(l => l.StartsWith("Warn", StringComparison.Ordinal) || l.StartsWith("Err", StringComparison.Ordinal)).Take(3))
                {
                    output.WriteLine("  " + line[..Math.Min(line.Length, 240)]);
                }
            }
            return calls.Any(c => c.StartsWith("FAILED", StringComparison.Ordinal));
        }

        // The sweep: call N, until the report path ends before its Nth call (about 5 calls; about 11 with Port's 503).
        for (var n = 1; n <= 16; n++)
        {
            var at = n;
            if (!await RoundAsync($"N={n}", (_, count) => count == at ? fault : ScriptFault.None))
            {
                break;
            }
        }
        // A call the sweep missed (its order shifted by a slow moment): the first of its kind after the finish, alone.
        string[] kinds = portFailsFirst
            ? [Finish, nameof(IDatabase.StreamAutoClaimAsync), nameof(IDatabase.StreamReadGroupAsync), Touch, Remove]
            : [Finish, nameof(IDatabase.StreamAutoClaimAsync), nameof(IDatabase.StreamReadGroupAsync), Remove];
        foreach (var missed in kinds.Where(k => !failedKinds.Contains(k)).ToList())
        {
            var done = 0;
            await RoundAsync($"first {missed}", (call, _) => Kind(call) == missed && Interlocked.Exchange(ref done, 1) == 0 ? fault : ScriptFault.None);
        }
        // The takeover of a pending report, a crashed reporter's (as in PortReportingTests): the takeover that finds it idle
        // past the reclaim time (2 s) fails. Its idle time is asked of Redis (on the test's own connection) before the
        // takeover is sent: it only grows, so that takeover is the one that takes the report.
        var orphan = TestRuns.NewRunId();
        var takeoverFailed = 0;
        bool OrphanIdle() => relay.Db.StreamPendingMessages(RedisKeys.PortReports, RedisKeys.PortReportersGroup, 10, "crashed-reporter")
            .Any(p => p.IdleTimeInMilliseconds >= 2_000);
        lock (counted)
        {
            counted.Clear();
        }
        Volatile.Write(ref seen, 0);
        Volatile.Write(ref counting, 1);
        Volatile.Write(ref plan, (call, _) => Kind(call) == nameof(IDatabase.StreamAutoClaimAsync)
            && Volatile.Read(ref takeoverFailed) == 0 && OrphanIdle() && Interlocked.Exchange(ref takeoverFailed, 1) == 0 ? fault : ScriptFault.None);
        try
        {
            if (portFailsFirst)
            {
                await relay.EmulatorApi.PortBehaviorAsync(new { failNext = 1, status = 503 });
            }
            // Written and read in one step: the reporter polling meanwhile must not read it first.
            var crashed = relay.Db.CreateTransaction();
            _ = crashed.StreamAddAsync(RedisKeys.PortReports,
                new PortAzure.Dispatcher.PortReporting.PortReport(orphan, "d_crashed", "delivered (HTTP 200) (test)", null, null).ToStreamFields());
            var read = crashed.StreamReadGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "crashed-reporter", ">", 1);
            Assert.True(await crashed.ExecuteAsync());
            Assert.Single(await read);
            runs.Add(orphan);
            await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == orphan && c.StatusCode == 201)
                && await NothingLeftAsync(relay), TimeSpan.FromSeconds(30), "a crashed reporter's report taken over, sent and removed");
        }
        finally
        {
            Volatile.Write(ref plan, null);
            lock (counted)
            {
                output.WriteLine($"takeover: {string.Join("; ", counted.Where(c => c.StartsWith("FAILED", StringComparison.Ordinal)).DefaultIfEmpty("(none failed)"))}");
            }
        }
        Assert.Equal(1, takeoverFailed);
        Assert.All(kinds, k => Assert.Contains(k, failedKinds));

        // Each run was waited for until nothing was left in either stream: no step can post it or report it again.
        var posts = (await relay.EmulatorApi.RequestsAsync()).GroupBy(r => r.Header("X-Port-Run-Id")).ToDictionary(g => g.Key!, g => g.Count());
        var portCalls = await relay.EmulatorApi.PortCallsAsync();
        Assert.All(runs.Where(r => r != orphan), r => Assert.Equal(1, posts.GetValueOrDefault(r)));
        // Taken once (201) per run, its outcome (delivered, HTTP 200), and tried once more only after Port's 503: no
        // report repeated, none lost.
        Assert.All(runs, r => Assert.Contains("(HTTP 200)", Assert.Single(portCalls, c => c.RunId == r && c.StatusCode == 201).BodyText, StringComparison.Ordinal));
        Assert.All(runs, r => Assert.Equal(portFailsFirst ? 2 : 1, portCalls.Count(c => c.RunId == r)));
        // Nothing unexpected (2106), no report that could not be queued (2218): no Error at all. No report given up, dropped,
        // trimmed (2202, 2203, 2211, 2212), or taken over from a reporter still sending it (2209).
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.StartsWith("Err", StringComparison.Ordinal) || l.StartsWith("Crit", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\w+ [^ ]*\[(2202|2203|2209|2211|2212)\]"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Read_ReplyLost_TheReportIsSentWithoutWaitingForTheReclaimTime(bool portFailsFirst)
    {
        // The sweep's N=3 with ReplyLost, at a reclaim time nearer production's (900 s): the read ran, so the report is
        // pending for this reporter, which never saw it. It was sent only when the reporter took it over from itself,
        // the reclaim time later: a Redis blip left the Port run without its outcome for 15 min.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var counting = 0;
        var lost = 0;
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            c["Dispatcher:PortReportReclaimSeconds"] = "60";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, services => FaultyRedis.FailCalls(services, call =>
        {
            if (Kind(call) == Finish)
            {
                Volatile.Write(ref counting, 1);
                return ScriptFault.None;
            }
            // The first read of the report stream after the finish: the one that reads the report.
            return Volatile.Read(ref counting) == 1 && Kind(call) == nameof(IDatabase.StreamReadGroupAsync) && call.Key == RedisKeys.PortReports
                && Interlocked.Exchange(ref lost, 1) == 0 ? ScriptFault.ReplyLost : ScriptFault.None;
        }));
        if (portFailsFirst)
        {
            // Its first try fails (the token call): the recovered report is retried, touched, and still sent once.
            await relay.EmulatorApi.PortBehaviorAsync(new { failNext = 1, status = 503 });
        }
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201)
                && await NothingLeftAsync(relay),
            TimeSpan.FromSeconds(20), "the report sent and removed well before the reclaim time (60 s)");

        Assert.Equal(1, Volatile.Read(ref lost));
        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
        Assert.Single(await relay.EmulatorApi.DeliveredAsync());
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.StartsWith("Err", StringComparison.Ordinal));
        // The read's failure is said (2205), and nothing was taken over (2209) or dropped (2203).
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2205]", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\w+ [^ ]*\[(2203|2209)\]"));
    }

    [Fact]
    public async Task Remove_ReplyLost_TheRetryDoesNotEndTheReportOnItsRecordAgain()
    {
        // The removal ran (the report ended on its record) and its reply was lost: the retry finds the entry acknowledged,
        // and leaves the record as the removal left it (the time it ended included).
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var lost = 0;
        var removals = 0;
        await relay.AddDispatcherAsync(services: services => FaultyRedis.FailCalls(services, call =>
            Kind(call) == Remove && Interlocked.Increment(ref removals) > 0 && Interlocked.Exchange(ref lost, 1) == 0 ? ScriptFault.ReplyLost : ScriptFault.None));
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var runId = TestRuns.NewRunId();
        var deliveryId = await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0, TimeSpan.FromSeconds(20), "a first, failing call to Port");
        var record = RedisKeys.Delivery(deliveryId);

        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });
        RedisValue endedAt = default;
        await Eventually.HoldsAsync(async () =>
            {
                var fields = await relay.Db.HashGetAsync(record, [DeliveryRecord.PortReport, DeliveryRecord.PortReportAt]);
                endedAt = fields[1];
                return (string?)fields[0] == "sent";
            },
            TimeSpan.FromSeconds(30), "the report sent and ended on its record");
        await Eventually.HoldsAsync(async () => Volatile.Read(ref removals) >= 2 && await NothingLeftAsync(relay), TimeSpan.FromSeconds(10), "the removal retried");
        // Its reply is not observed: half a second for it to have run.
        await Task.Delay(TimeSpan.FromSeconds(0.5));

        Assert.Equal(1, Volatile.Read(ref lost));
        Assert.Equal(endedAt, await relay.Db.HashGetAsync(record, DeliveryRecord.PortReportAt));
        Assert.False(await relay.Db.HashExistsAsync(record, DeliveryRecord.PortReportEntry));
        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId && c.StatusCode == 201);
    }

    [Fact]
    public async Task Read_ReplyLostJustBeforeTheStop_TheReportIsHandedBack()
    {
        // The read ran, so the report is pending for this reporter, which never saw it, and the stop came before a round
        // read it back (Redis still failing meanwhile). It was left pending, not handed back with the unsent reports, and
        // sent only when another reporter took it over the reclaim time later (15 min by default).
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var counting = 0;
        var lost = 0;
        var stopping = 0;
        var dispatcher = await relay.AddDispatcherAsync(c => c["Dispatcher:PortReportReclaimSeconds"] = "60", services => FaultyRedis.FailCalls(services, call =>
        {
            if (Kind(call) == Finish)
            {
                Volatile.Write(ref counting, 1);
                return ScriptFault.None;
            }
            if (Volatile.Read(ref counting) == 0 || call.Key != RedisKeys.PortReports || Volatile.Read(ref stopping) == 1)
            {
                return ScriptFault.None;
            }
            // The first read of the report after the finish loses its reply; the reporter's calls after it fail until the stop.
            if (Kind(call) == nameof(IDatabase.StreamReadGroupAsync) && Interlocked.Exchange(ref lost, 1) == 0)
            {
                return ScriptFault.ReplyLost;
            }
            return Volatile.Read(ref lost) == 1 ? ScriptFault.NotRun : ScriptFault.None;
        }));
        dispatcher.Services.GetRequiredService<Microsoft.Extensions.Hosting.IHostApplicationLifetime>().ApplicationStopping
            .Register(() => Volatile.Write(ref stopping, 1));
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => Volatile.Read(ref lost) == 1
                && (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount == 1,
            TimeSpan.FromSeconds(20), "the report read with its reply lost, pending for the reporter");
        // A few failed rounds: the reporter is backing off when the stop comes.
        await Task.Delay(TimeSpan.FromSeconds(1));
        await relay.StopDispatcherAsync(dispatcher);

        // Handed back: a new entry, pending for nobody, that any reporter reads at once.
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.StartsWith("Err", StringComparison.Ordinal));
        Assert.Empty(await relay.EmulatorApi.PortCallsAsync());
        await relay.AddDispatcherAsync(c => c["Dispatcher:PortReportReclaimSeconds"] = "60");
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201)
                && await NothingLeftAsync(relay),
            TimeSpan.FromSeconds(20), "the next Dispatcher sends the report well before the reclaim time (60 s)");
        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
    }

    [Theory]
    [InlineData(ScriptFault.NotRun)]
    [InlineData(ScriptFault.ReplyLost)]
    public async Task HandBack_FailsAtTheStop_TheReportIsStillSentOnceMore(ScriptFault fault)
    {
        // A call to Port cut short by the stop (it may have reached Port), and the hand-back that follows fails: not run,
        // the report stays pending for the stopped reporter and is taken over after the reclaim time; run with its reply
        // lost, it was handed back. Either way the next Dispatcher sends it, and nothing is left in the report stream.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Dispatcher:PortReportReclaimSeconds"] = "2";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        var failed = 0;
        var stopped = await relay.AddDispatcherAsync(configure: null, services => FaultyRedis.FailCalls(services,
            call => Kind(call) == HandBack && Interlocked.Exchange(ref failed, 1) == 0 ? fault : ScriptFault.None));
        await relay.EmulatorApi.PortBehaviorAsync(new { delayMs = 30_000 });
        var runId = TestRuns.NewRunId();
        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId), TimeSpan.FromSeconds(20),
            "the report's call reaches Port and waits for its answer");

        await relay.StopDispatcherAsync(stopped);

        Assert.Equal(1, Volatile.Read(ref failed));
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Equal(fault == ScriptFault.NotRun ? 1 : 0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        // The failure said (2205); the hand-back not claimed (2208) when its reply did not come.
        Assert.Contains(stopped.Logs.Lines, l => l.Contains("[2205]", StringComparison.Ordinal));
        Assert.DoesNotContain(stopped.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));
        await relay.EmulatorApi.PortBehaviorAsync(new { delayMs = 0 });
        // Past the reclaim time: the stopped reporter is idle long enough to be taken for gone at the next start.
        await Task.Delay(TimeSpan.FromSeconds(2.5));
        var next = await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201)
                && await NothingLeftAsync(relay),
            TimeSpan.FromSeconds(20), "the next Dispatcher sends the report, and nothing is left in the report stream");
        // The call cut short, then the one sent by the next Dispatcher: as documented for a call cut short at a stop.
        Assert.Equal(2, (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.RunId == runId));
        Assert.DoesNotContain(stopped.Logs.Lines.Concat(next.Logs.Lines), l => l.StartsWith("Err", StringComparison.Ordinal));
    }

    private static async Task<bool> NothingLeftAsync(Relay relay) =>
        await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
        && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0
        && await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule) == 0
        && await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0
        && (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount == 0;

    /// <summary>What a call is on the report path: the finish, the reporter's scripts by name, else the method.</summary>
    private static string Kind(RedisCall call) => call.Script switch
    {
        { } s when DispatcherScripts.IsFinish(s) => Finish,
        { } s when s.Contains("'JUSTID'", StringComparison.Ordinal) => Touch,
        { } s when s.Contains("'XADD'", StringComparison.Ordinal) && call.Key == RedisKeys.PortReports => HandBack,
        { } s when s.Contains("'XDEL'", StringComparison.Ordinal) && call.Key == RedisKeys.PortReports => Remove,
        _ => call.Method,
    };
}
