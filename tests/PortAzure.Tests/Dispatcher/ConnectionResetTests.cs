using System.Net;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

/// <summary>
/// Redis calls failed with the socket's own exception, unwrapped, as StackExchange.Redis fails the calls in flight on a
/// connection that dies (seen when Redis was killed under load: RedisRestartTests once posted 15 runs twice, another
/// time 2, each after a finish failed so). The faults are injected into a real Redis's replies (<see cref="FaultyRedis"/>).
/// </summary>
public class ConnectionResetTests
{
    [Theory]
    [InlineData(ScriptFault.NotRun)]
    [InlineData(ScriptFault.ReplyLost)]
    [InlineData(ScriptFault.NotRunUnclassified)]
    public async Task Finish_FailsAfterAzureAnswered_IsRetriedAndTheRunIsPostedOnce(ScriptFault fault)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var failed = 0;
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            // A lease short enough that a finish given up is posted again within the wait below (timeout 2 + finish 20 +
            // margin/2), long enough that the finish's window (the lease less one Redis timeout, 15 s here) holds a retry.
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:FinishRetrySeconds"] = "20";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, services => FaultyRedis.FailScripts(services,
            script => DispatcherScripts.IsFinish(script) && Interlocked.Exchange(ref failed, 1) == 0 ? fault : ScriptFault.None));

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);

        // Once the entry has left the stream and nothing is pending or scheduled, nothing can post the run again. Before
        // the fix the finish that failed was not retried: the entry stayed pending until its lease ran out (22.5 s), and a
        // reclaim posted the run a second time.
        await Eventually.HoldsAsync(async () =>
            (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered
            && await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
            && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0
            && await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule) == 0,
            TimeSpan.FromSeconds(60), "the run is recorded delivered and nothing is left to post");
        Assert.Equal(1, Volatile.Read(ref failed));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2106]", StringComparison.Ordinal));
        // Retried, with the exception: as a Redis failure (Warning 2007), or as a defect (Error 2009) when it is none.
        var retried = fault == ScriptFault.NotRunUnclassified ? "[2009]" : "[2007]";
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains(retried, StringComparison.Ordinal)
            && l.Contains(deliveryId, StringComparison.Ordinal) && l.Contains("Exception", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Read_ReplyLost_TheRunIsDeliveredWithoutWaitingForTheReclaim()
    {
        // The read ran, so the entry is pending for this consumer, which never saw it. It was delivered only when a reclaim
        // took it back, ClaimMinIdle (30 s by default) later: a Redis blip held the run back that long.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        var lost = 0;
        var dispatcher = await relay.AddDispatcherAsync(configure: null, services => FaultyRedis.FailCalls(services,
            call => IsRead(call) && Interlocked.Exchange(ref lost, 1) == 0 ? ScriptFault.ReplyLost : ScriptFault.None));

        await Eventually.HoldsAsync(async () => await NothingLeftAsync(relay, deliveryId), TimeSpan.FromSeconds(15),
            "the run delivered and its entry finished well before the reclaim (30 s)");
        Assert.Equal(1, Volatile.Read(ref lost));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2111]", StringComparison.Ordinal) && l.Contains("Read back 1 ", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2104]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Read_ReplyLostWhileAnotherRunIsPosted_OnlyTheUnseenEntryIsReadBack()
    {
        // The read back covers this consumer's whole pending list, which holds the entry being posted too: started again,
        // it would find the running attempt's lease (2004).
        // A Redis of its own: the wake channel is the server's, not a database's, and another test's runs woke this worker
        // for a read (empty, its reply lost) before the second run was queued.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 3000 });
        var first = await DeliveryOutcomeTests.SendAsync(relay);
        var answered = 0;
        var armed = 0;
        var lost = 0;
        // Reads only when woken (the safety-net poll is a minute): the first takes the first run, the second finds nothing
        // and the worker waits; the next is the second run's, woken by its XADD. Its reply is lost.
        var dispatcher = await relay.AddDispatcherAsync(c => c["Dispatcher:PollIntervalSeconds"] = "60", services => FaultyRedis.FailCalls(services,
            call => IsRead(call) && !IsReadBack(call) && Volatile.Read(ref armed) == 1 && Interlocked.Exchange(ref lost, 1) == 0
                ? ScriptFault.ReplyLost : ScriptFault.None,
            replied: call =>
            {
                if (IsRead(call) && !IsReadBack(call))
                {
                    Interlocked.Increment(ref answered);
                }
            }));
        // Answered, not only sent: a read sent before the second run is queued could otherwise reach Redis after it.
        await Eventually.HoldsAsync(async () => Volatile.Read(ref answered) == 2
            && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 1,
            TimeSpan.FromSeconds(10), "the first run being posted, the worker's next read answered");
        Volatile.Write(ref armed, 1);

        var second = await DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () => await NothingLeftAsync(relay, first) && await NothingLeftAsync(relay, second),
            TimeSpan.FromSeconds(20), "both runs delivered, nothing left pending");
        Assert.Equal(1, Volatile.Read(ref lost));
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
        Assert.Contains(dispatcher.Logs.Lines, l => l.Contains("[2111]", StringComparison.Ordinal) && l.Contains("Read back 1 ", StringComparison.Ordinal));
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2004]", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(ScriptFault.NotRun, nameof(IDatabase.StreamCreateConsumerGroupAsync))]
    [InlineData(ScriptFault.ReplyLost, nameof(IDatabase.StreamCreateConsumerGroupAsync))]
    [InlineData(ScriptFault.NotRun, "DELCONSUMER")]
    [InlineData(ScriptFault.ReplyLost, "DELCONSUMER")]
    [InlineData(ScriptFault.NotRun, nameof(IDatabase.StreamReadGroupAsync))]
    [InlineData(ScriptFault.ReplyLost, nameof(IDatabase.StreamReadGroupAsync))]
    public async Task Start_ConsumerNameConfigured_AStartUpCallFails_HeldAndNewRunsAreDeliveredOnce(ScriptFault fault, string step)
    {
        // The start's calls in turn: the group's creation, the removal of stale consumers, the read back of the entry this
        // consumer held before its restart (the first read). Each is tried again: the held run and a new one are posted
        // once each, well before the reclaim (30 s).
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        await relay.Db.StreamCreateConsumerGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "0-0", createStream: true);
        var held = await DeliveryOutcomeTests.SendAsync(relay);
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "dispatcher-0", ">", 1));
        var failed = 0;
        var dispatcher = await relay.AddDispatcherAsync(c => c["Dispatcher:ConsumerName"] = "dispatcher-0", services => FaultyRedis.FailCalls(services,
            call => call.Key == RedisKeys.Stream && (call.Method == step || call.Script?.Contains(step, StringComparison.Ordinal) == true)
                && Interlocked.Exchange(ref failed, 1) == 0 ? fault : ScriptFault.None));
        var fresh = await DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () => await NothingLeftAsync(relay, held) && await NothingLeftAsync(relay, fresh), TimeSpan.FromSeconds(15),
            "both runs delivered well before the reclaim (30 s), nothing left pending");
        Assert.Equal(1, Volatile.Read(ref failed));
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.StartsWith("Err", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Reclaim_OfThisConsumersOwnEntryWhoseFinishIsRetrying_DoesNotStartItAgain()
    {
        // The reclaim takes this consumer's own entries too: one whose finish keeps retrying past ClaimMinIdle (2 s here)
        // was started a second time, found the first attempt's lease (2004) and, ending, struck the entry from what this
        // consumer was processing while the first attempt still ran.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        long failUntil = 0;
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "1";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
            // The finish's window: the lease (1 + 20 + 0.5 s) less one Redis timeout (3 s).
            c["Dispatcher:FinishRetrySeconds"] = "20";
        }, services => FaultyRedis.FailScripts(services, script =>
        {
            if (!DispatcherScripts.IsFinish(script))
            {
                return ScriptFault.None;
            }
            // The first finish starts 5 s of failures.
            Interlocked.CompareExchange(ref failUntil, Environment.TickCount64 + 5000, 0);
            return Environment.TickCount64 < Interlocked.Read(ref failUntil) ? ScriptFault.NotRun : ScriptFault.None;
        }));

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () => await NothingLeftAsync(relay, deliveryId), TimeSpan.FromSeconds(20),
            "the run recorded delivered once the finish went through");
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.DoesNotContain(dispatcher.Logs.Lines, l => l.Contains("[2004]", StringComparison.Ordinal) || l.Contains("[2104]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ReadBack_AnAttemptEndsBetweenTheReadAndItsReply_TheEntryIsNotStartedAgain()
    {
        // The read back passes over what is being processed. Looked at once its reply had come, an attempt that ended after
        // Redis ran the read (its entry still listed, acknowledged since) was no longer being processed: started again, a
        // run that Azure had just answered 503 was posted a second time at once instead of at its retry.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503, delayMs = 3000 } } });
        var newReads = 0;
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        var hold = new UntilTheAttemptEnds(relay, deliveryId);
        var dispatcher = await relay.AddDispatcherAsync(
            // The retry is due 30 s on: a second POST before then is the defect.
            c =>
            {
                c["Dispatcher:Retry:InitialDelaySeconds"] = "30";
                c["Dispatcher:Retry:MaxDelaySeconds"] = "60";
            },
            services => FaultyRedis.FailCalls(services,
                // The first read takes the run; the second, while it is being posted, loses its reply: the next round reads back.
                call => IsRead(call) && !IsReadBack(call) && Interlocked.Increment(ref newReads) == 2 ? ScriptFault.ReplyLost : ScriptFault.None,
                // The read back's reply waits until the attempt has recorded the 503 (and its task has ended).
                call => IsReadBack(call) ? hold.HoldAsync() : null));

        await hold.AssertPostedOnceAsync("the read back");
        Assert.True(Volatile.Read(ref newReads) >= 2, "the second read failed");
    }

    [Fact]
    public async Task Reclaim_AnAttemptEndsBetweenTheReclaimAndItsReply_TheEntryIsNotStartedAgain()
    {
        // The read back's case, for the reclaim, which returns this consumer's own entries too: one whose finish keeps
        // failing past ClaimMinIdle (2 s here), then goes through (503 recorded, the entry acknowledged) before the reply is
        // looked at, was no longer being processed: started again, posted a second time at once instead of at its retry.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        long firstFailure = 0;
        RedisCall? toHold = null;
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        var hold = new UntilTheAttemptEnds(relay, deliveryId);
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "1";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            // One reclaim every 2.5 s: the second comes with the entry idle 2.5 s, none before it has reset that.
            c["Dispatcher:ClaimIntervalSeconds"] = "2.5";
            // The finish's window: the lease (1 + 20 + 0.5 s) less one Redis timeout (3 s).
            c["Dispatcher:FinishRetrySeconds"] = "20";
            c["Dispatcher:Retry:InitialDelaySeconds"] = "30";
            c["Dispatcher:Retry:MaxDelaySeconds"] = "60";
        }, services => FaultyRedis.FailCalls(services,
            call =>
            {
                if (call.Script is { } script && DispatcherScripts.IsFinish(script))
                {
                    // The finish fails for 5 s from its first try (it goes through at its try 5.6 s on).
                    return Elapsed(Interlocked.CompareExchange(ref firstFailure, Environment.TickCount64, 0)) < 5000 ? ScriptFault.NotRun : ScriptFault.None;
                }
                // The first reclaim sent while the entry is idle past ClaimMinIdle, the finish still failing, takes it: its reply is
                // held (asked here, before it is sent; a reclaim resets the idle time).
                if (call.Method == nameof(IDatabase.StreamAutoClaimAsync) && Volatile.Read(ref toHold) is null && Volatile.Read(ref firstFailure) > 0
                    && relay.Db.StreamPendingMessages(RedisKeys.Stream, RedisKeys.ConsumerGroup, 1, RedisValue.Null) is [{ IdleTimeInMilliseconds: > 2100 }]
                    && (string?)relay.Db.HashGet(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) != DeliveryStates.Retrying)
                {
                    Volatile.Write(ref toHold, call);
                }
                return ScriptFault.None;
            },
            call => ReferenceEquals(call, Volatile.Read(ref toHold)) ? hold.HoldAsync() : null));

        static long Elapsed(long since) => since == 0 ? 0 : Environment.TickCount64 - since;

        await hold.AssertPostedOnceAsync("the reclaim");
    }

    /// <summary>
    /// Holds a call's reply until the run's attempt has recorded Azure's 503 and its task has ended; then the run must not be
    /// posted again before its retry (30 s on).
    /// </summary>
    private sealed class UntilTheAttemptEnds(Relay relay, string deliveryId)
    {
        private int _sentWhileUnderWay;
        private int _held;

        public async Task HoldAsync()
        {
            // Else the call ran after the attempt ended and found nothing: the test would pass without testing anything.
            if (!await RetryRecordedAsync())
            {
                Interlocked.Increment(ref _sentWhileUnderWay);
            }
            await Eventually.HoldsAsync(RetryRecordedAsync, TimeSpan.FromSeconds(10), "the 503 recorded");
            await Task.Delay(200);
            Interlocked.Increment(ref _held);
        }

        public async Task AssertPostedOnceAsync(string call)
        {
            await Eventually.HoldsAsync(() => Task.FromResult(Volatile.Read(ref _held) >= 1), TimeSpan.FromSeconds(15), $"{call} answered");
            await Task.Delay(TimeSpan.FromSeconds(3));
            Assert.True(Volatile.Read(ref _sentWhileUnderWay) >= 1, $"{call} ran while the attempt was under way");
            Assert.Single(await relay.EmulatorApi.RequestsAsync());
            Assert.True(await RetryRecordedAsync(), "the run waits for its retry");
        }

        private async Task<bool> RetryRecordedAsync() =>
            (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Retrying;
    }

    private static bool IsReadBack(RedisCall call) =>
        IsRead(call) && call.Arguments is [_, _, _, RedisValue position, ..] && position != ">";

    /// <summary>A read of new entries, or of the consumer's own pending ones, on the delivery stream.</summary>
    private static bool IsRead(RedisCall call) => call.Method == nameof(IDatabase.StreamReadGroupAsync) && call.Key == RedisKeys.Stream;

    private static async Task<bool> NothingLeftAsync(Relay relay, string deliveryId) =>
        (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered
        && await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
        && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0;

    [Fact]
    public async Task Enqueue_ConnectionReset_Answers503OutcomeUnknown()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var config = new Dictionary<string, string?>(relay.Config);
        await using var ingress = await TestHost.StartIngressAsync(config, services => FaultyRedis.FailScripts(services, _ => ScriptFault.ReplyLost));
        var runId = TestRuns.NewRunId();

        using var response = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(runId));

        // It was a 500 (the exception handler's) before: the run is queued, and Port is told to retry, which answers 200.
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("queue_unavailable", await ProblemResponses.ReasonAsync(response));
        Assert.Contains("may or may not be queued", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.NotNull(response.Headers.RetryAfter);
        using var retried = await relay.SendRunAsync(TestRuns.Body(runId));
        Assert.Equal(HttpStatusCode.OK, retried.StatusCode);
    }

    [Fact]
    public async Task OperatorReplay_ConnectionReset_Answers503RedisUnavailable()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var dispatcher = await relay.AddDispatcherAsync(services: services => FaultyRedis.FailScripts(services, _ => ScriptFault.NotRun));
        using var request = new HttpRequestMessage(HttpMethod.Post, $"/api/deadletters/d_{Guid.NewGuid():N}/replay");
        request.Headers.Add("X-Api-Key", Relay.AdminKey);

        using var response = await dispatcher.Client.SendAsync(request);

        // It was a 500 before: an outage to wait out, not a fault of the relay.
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("redis_unavailable", await ProblemResponses.ReasonAsync(response));
        Assert.NotNull(response.Headers.RetryAfter);
    }

    [Theory]
    [InlineData(ScriptFault.NotRun)]
    [InlineData(ScriptFault.ReplyLost)]
    public async Task MalformedEntry_AcknowledgeAndDeleteFails_IsTakenAgainAndRemoved(ScriptFault fault)
    {
        // Acknowledged and deleted in one script: whether it never ran or its reply was lost, the entry is not
        // left acknowledged in the stream (unread for good, the backlog's age growing): it is read again, or gone.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var failed = 0;
        var dispatcher = await relay.AddDispatcherAsync(c =>
        {
            // A read whose entry was not acknowledged is taken again after timeout + margin, 3 s.
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, services => FaultyRedis.FailCalls(services,
            call => call.Key == RedisKeys.Stream && call.Script is { } script && script.Contains("'XDEL'", StringComparison.Ordinal) && Interlocked.Exchange(ref failed, 1) == 0 ? fault : ScriptFault.None));
        await relay.Db.StreamAddAsync(RedisKeys.Stream, [new("id", "d_x"), new("org", "contoso"), new("body", "{}")]);

        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
            && (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount == 0,
            TimeSpan.FromSeconds(30), "the malformed entry is gone, nothing pending");
        Assert.Equal(1, Volatile.Read(ref failed));
        // Read twice (the second time taken back from the pending list) when the first removal never ran; once otherwise.
        Assert.Equal(fault == ScriptFault.NotRun ? 2 : 1, dispatcher.Logs.Lines.Count(l => l.Contains("[2105]", StringComparison.Ordinal)));
        // A queued run is delivered as usual.
        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(20), "the next run is delivered");
    }
}
