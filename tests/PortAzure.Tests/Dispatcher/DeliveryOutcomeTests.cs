using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>Each outcome class, against the emulator told what to answer.</summary>
public class DeliveryOutcomeTests
{
    // Generous: the suite runs many hosts at once on 2 cores.
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(45);

    internal static async Task<string> SendAsync(Relay relay, string? runId = null, string webhook = TestRuns.Webhook)
    {
        using var response = await relay.SendRunAsync(TestRuns.Body(runId ?? TestRuns.NewRunId()), webhook: webhook);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;
    }

    internal static async Task<JsonElement> DeliveryAsync(Relay relay, string deliveryId)
    {
        using var request = relay.Operator(HttpMethod.Get, $"/api/deliveries/{deliveryId}");
        using var response = await relay.Ingress.Client.SendAsync(request);
        response.EnsureSuccessStatusCode();
        return await response.Content.ReadFromJsonAsync<JsonElement>();
    }

    internal static Task WaitForStateAsync(Relay relay, string deliveryId, string state) =>
        Eventually.HoldsAsync(async () => (await DeliveryAsync(relay, deliveryId)).GetProperty("state").GetString() == state, Wait, $"{deliveryId} is {state}");

    [Theory]
    [InlineData(408)]
    [InlineData(429)]
    [InlineData(500)]
    [InlineData(502)]
    [InlineData(503)]
    [InlineData(504)]
    public async Task Transient_StatusOnce_IsRetriedAndDelivered(int status)
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status } } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal(2, view.GetProperty("attempts").GetInt32());
        var history = view.GetProperty("attemptHistory").EnumerateArray().ToList();
        Assert.Equal(status, history[0].GetProperty("status").GetInt32());
        Assert.Equal("transient", history[0].GetProperty("outcome").GetString());
        Assert.Equal(200, history[1].GetProperty("status").GetInt32());
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
        // The retry's time is not a next attempt once delivered.
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.NextAttemptAt));
        AssertNoNextAttempt(view);
    }

    // The retry's answer, slow: the run waits for it as "retrying" with its next attempt's time, which it drops once delivered.
    private static readonly object SlowSuccess = new { status = 200, delayMs = 3000 };

    /// <summary>The delivery's view while it waits for (or makes) its first retry, with the time that retry was due.</summary>
    private static async Task<JsonElement> WaitingForItsRetryAsync(Relay relay, string deliveryId)
    {
        JsonElement waiting = default;
        await Eventually.HoldsAsync(async () =>
        {
            var view = await DeliveryAsync(relay, deliveryId);
            waiting = view;
            return view.GetProperty("state").GetString() == DeliveryStates.Retrying
                && view.TryGetProperty("nextAttemptAt", out var next) && next.ValueKind != JsonValueKind.Null;
        }, Wait, $"{deliveryId} waits for its retry");
        return waiting;
    }

    private static void AssertNoNextAttempt(JsonElement view) =>
        Assert.True(!view.TryGetProperty("nextAttemptAt", out var next) || next.ValueKind == JsonValueKind.Null, $"no next attempt: {view}");

    [Theory]
    [InlineData(400, "Secret")]
    [InlineData(401, "Headers")]
    [InlineData(403, "Secret")]
    [InlineData(404, "organisation name")]
    [InlineData(410, "not retried")]
    [InlineData(302, "redirect")]
    [InlineData(301, "redirect")]
    public async Task Permanent_Status_IsDeadLetteredAtOnceWithAHint(int status, string hint)
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status } } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);
        await Task.Delay(700);

        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal("permanent_failure", view.GetProperty("reason").GetString());
        Assert.Contains(hint, view.GetProperty("hint").GetString(), StringComparison.OrdinalIgnoreCase);
        Assert.Equal(status, view.GetProperty("lastStatus").GetInt32());
        Assert.Equal(1, view.GetProperty("attempts").GetInt32());
        var requests = await relay.EmulatorApi.RequestsAsync();
        // One POST: not retried, and a redirect is not followed.
        Assert.Single(requests);
        Assert.Equal(1, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Timeout_SlowAnswer_IsTransientAndRetried()
    {
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:RequestTimeoutSeconds"] = "0.5");
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 200, delayMs = 3000 } } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        var history = (await DeliveryAsync(relay, deliveryId)).GetProperty("attemptHistory").EnumerateArray().ToList();
        Assert.Equal("timeout", history[0].GetProperty("error").GetString());
        Assert.Equal("delivered", history[^1].GetProperty("outcome").GetString());
    }

    [Fact]
    public async Task PermanentFailure_AfterATimedOutTry_HintSaysToCheckThePipelinesRunsBeforeReplaying()
    {
        // The first try's answer never came (Azure may have started the pipeline); the second is refused 404. The hint spoke of
        // the 404 alone, and a replay after fixing the webhook could start a second run.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:RequestTimeoutSeconds"] = "0.5");
        // More than one 404: on a starved machine the second try too may time out (a new connection, the first still held).
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 200, delayMs = 3000 }, new { status = 404 }, new { status = 404 }, new { status = 404 } } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal("permanent_failure", view.GetProperty("reason").GetString());
        var hint = view.GetProperty("hint").GetString();
        Assert.StartsWith("Azure DevOps answered 404", hint, StringComparison.Ordinal);
        Assert.Contains("A try's answer was lost", hint, StringComparison.Ordinal);
        Assert.EndsWith("check its runs before replaying.", hint, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PermanentFailure_WithoutALostAnswer_HintSaysNothingOfIt()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 503 }, new { status = 404 } } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        Assert.DoesNotContain("answer was lost", (await DeliveryAsync(relay, deliveryId)).GetProperty("hint").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Throttled_MoreTimesThanMaxAttempts_SpendsNoAttemptsAndIsDelivered()
    {
        // Azure started nothing on a 429: counted, a throttled webhook dead-lettered its runs after MaxAttempts of them.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:Retry:MaxAttempts"] = "2";
            c["Dispatcher:Retry:InitialDelaySeconds"] = "0.1";
            c["Dispatcher:Retry:MaxDelaySeconds"] = "0.2";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = Enumerable.Repeat(new { status = 429 }, 4).ToArray() });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        Assert.Equal(5, (await relay.EmulatorApi.RequestsAsync()).Count);
    }

    [Fact]
    public async Task FreeAttemptsDamaged_AboveTheTries_MaxAttemptsStillHolds()
    {
        // attempts - freeAttempts went below 0: every try that may start the pipeline, without a bound but the age.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAttempts"] = "2", dispatchers: 0);
        await relay.EmulatorApi.ScriptAsync(new { failureRate = 1.0, failureStatuses = new[] { 503 } });
        var deliveryId = await SendAsync(relay);
        await relay.Db.HashSetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.FreeAttempts, 50);

        await relay.AddDispatcherAsync();
        // (The record, not the API: no Dispatcher was behind the Ingress when it started.)
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.DeadLettered,
            Wait, "the run dead-lettered");

        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
    }

    [Fact]
    public async Task ConnectionRefused_UntilBudgetSpent_IsDeadLetteredAsUnreachable()
    {
        using var closed = new ClosedPort();
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:BaseUrl"] = $"http://127.0.0.1:{closed.Port}";
            c["Dispatcher:Retry:MaxAttempts"] = "3";
        });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal("retries_exhausted", view.GetProperty("reason").GetString());
        Assert.Equal(3, view.GetProperty("attempts").GetInt32());
        Assert.Contains("could not be reached", view.GetProperty("hint").GetString(), StringComparison.Ordinal);
        Assert.Equal(3, view.GetProperty("attemptHistory").GetArrayLength());
        Assert.All(view.GetProperty("attemptHistory").EnumerateArray(), a =>
        {
            Assert.Equal("connection", a.GetProperty("error").GetString());
            Assert.StartsWith("ConnectionError: Connection refused", a.GetProperty("excerpt").GetString(), StringComparison.Ordinal);
        });
    }

    [Fact]
    public async Task AnswerLost_ConnectionClosedAfterEachRequest_IsDeadLetteredSayingAzureMayHaveStartedThePipeline()
    {
        // Azure (or a proxy) reads the whole POST and closes without answering: the request was sent every time. Told "could
        // not be reached: check network access", an operator would replay a run that may have started three pipelines.
        await using var azure = DroppingServer.Start();
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:BaseUrl"] = $"http://127.0.0.1:{azure.Port}";
            c["Dispatcher:Retry:MaxAttempts"] = "3";
        });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        Assert.Equal(3, azure.Requests);
        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal("retries_exhausted", view.GetProperty("reason").GetString());
        var hint = view.GetProperty("hint").GetString();
        Assert.Contains("answer was lost", hint, StringComparison.Ordinal);
        Assert.Contains("check its runs before replaying", hint, StringComparison.Ordinal);
        Assert.DoesNotContain("could not be reached", hint, StringComparison.Ordinal);
        Assert.Equal("answer_lost", view.GetProperty("lastError").GetString());
        Assert.All(view.GetProperty("attemptHistory").EnumerateArray(), a =>
        {
            Assert.Equal("answer_lost", a.GetProperty("error").GetString());
            Assert.StartsWith("ResponseEnded:", a.GetProperty("excerpt").GetString(), StringComparison.Ordinal);
        });
    }

    [Fact]
    public async Task WebhookNotActive_500UntilBudgetSpent_HintSaysRunThePipelineOnce()
    {
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAttempts"] = "3");
        await relay.EmulatorApi.ScriptAsync(new { failureRate = 1.0, failureStatuses = new[] { 500 } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Contains("once by hand", view.GetProperty("hint").GetString(), StringComparison.Ordinal);
        Assert.Equal(3, (await relay.EmulatorApi.RequestsAsync()).Count);
        // The retry that led to the dead letter is not a next attempt; nor is one an older relay left on its record.
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.NextAttemptAt));
        AssertNoNextAttempt(view);
        await relay.Db.HashSetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.NextAttemptAt, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        AssertNoNextAttempt(await DeliveryAsync(relay, deliveryId));
    }

    [Fact]
    public async Task RetryAfter_Seconds_IsHonoured()
    {
        // Without jitter, which spreads a retry after Retry-After (RetryPolicyTests): the schedule below is then exact.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:Retry:MaxDelaySeconds"] = "30";
            c["Dispatcher:Retry:JitterFraction"] = "0";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 503, retryAfter = "2" }, SlowSuccess } });

        var deliveryId = await SendAsync(relay);
        var waiting = await WaitingForItsRetryAsync(relay, deliveryId);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(2, requests.Count);
        // Not before Retry-After.
        Assert.True(requests[1].ReceivedAt - requests[0].ReceivedAt >= TimeSpan.FromSeconds(1.9));
        // Scheduled for exactly Retry-After after the first attempt (both times come from the same clock reading; the
        // schedule keeps milliseconds), not the back-off's (1 s and up, capped at 30 s). No wall-clock bound: the machine is shared.
        var scheduled = waiting.GetProperty("nextAttemptAt").GetDateTimeOffset() - waiting.GetProperty("attemptHistory")[0].GetProperty("at").GetDateTimeOffset();
        Assert.InRange(scheduled.TotalMilliseconds, 1999, 2000);
    }

    [Fact]
    public async Task RetryWaiting_OneDeliverySlot_OtherRunsAreDeliveredMeanwhile()
    {
        // A retry waits in the schedule, not in a slot: with one slot, a run behind it is not held for its Retry-After.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:MaxConcurrency"] = "1";
            c["Dispatcher:Retry:MaxDelaySeconds"] = "300";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503, retryAfter = "300" } } });
        var waiting = await SendAsync(relay);
        await WaitForStateAsync(relay, waiting, DeliveryStates.Retrying);

        var next = await SendAsync(relay);
        await WaitForStateAsync(relay, next, DeliveryStates.Delivered);

        Assert.Equal(DeliveryStates.Retrying, (await DeliveryAsync(relay, waiting)).GetProperty("state").GetString());
        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count);
    }

    [Fact]
    public async Task RetryAfter_HttpDate_IsHonoured()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:Retry:MaxDelaySeconds"] = "10";
            c["Dispatcher:Retry:JitterFraction"] = "0";
        });
        var at = DateTimeOffset.UtcNow.AddSeconds(5).ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 429, retryAfter = at }, SlowSuccess } });

        var deliveryId = await SendAsync(relay);
        var view = await WaitingForItsRetryAsync(relay, deliveryId);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        var requests = await relay.EmulatorApi.RequestsAsync();
        var asked = DateTimeOffset.Parse(at, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(requests[1].ReceivedAt >= asked.AddSeconds(-0.1), $"retried at {requests[1].ReceivedAt:o}, asked for {at}");
        // Scheduled for the date itself: the wait is the date less the clock when the answer was read, added to the clock
        // read just after, so the schedule falls on the date or the moment between those two reads after it (under a
        // second however loaded the machine). Half the wait, or the back-off's 0.1 s, falls a second or more before it.
        var late = view.GetProperty("nextAttemptAt").GetDateTimeOffset() - asked;
        if (view.GetProperty("attemptHistory")[0].GetProperty("at").GetDateTimeOffset() < asked)
        {
            // Unless the answer came after the date itself (a stalled machine): the wait is then none, due at once.
            Assert.InRange(late.TotalMilliseconds, 0, 999);
        }
    }

    [Fact]
    public async Task RetryAfter_BeyondTheCap_IsClampedToTheCap()
    {
        // Without jitter, which spreads a retry below the cap (RetryPolicyTests): the schedule below is then exact.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:Retry:MaxDelaySeconds"] = "1";
            c["Dispatcher:Retry:JitterFraction"] = "0";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 503, retryAfter = "3600" }, SlowSuccess } });

        var deliveryId = await SendAsync(relay);
        var view = await WaitingForItsRetryAsync(relay, deliveryId);

        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        // The cap itself, from the attempt's clock reading: ignoring Retry-After would give the back-off's ~0.1 s.
        var scheduled = view.GetProperty("nextAttemptAt").GetDateTimeOffset() - view.GetProperty("attemptHistory")[0].GetProperty("at").GetDateTimeOffset();
        Assert.InRange(scheduled.TotalMilliseconds, 999, 1000);
    }

    [Fact]
    public async Task AzureClient_TransientAnswer_IsPostedOnceUntilOurOwnRetryIsDue()
    {
        // The ServiceDefaults resilience handler would retry a 503 within a few seconds; our client must not.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:Retry:InitialDelaySeconds"] = "30";
            c["Dispatcher:Retry:MaxDelaySeconds"] = "30";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 }, new { status = 503 }, new { status = 503 } } });

        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Retrying);
        await Task.Delay(6000);

        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(1, await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule));
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task StreamCopyOfAnAlreadyDeliveredRun_IsDroppedWithoutAPost()
    {
        // A copy left in the stream after its delivery finished elsewhere (a reclaim racing a slow finish): dropped
        // from the stream, never posted again.
        await using var relay = await Relay.StartAsync();
        var entry = new DeliveryEntry("d_" + Guid.NewGuid().ToString("N"), TestRuns.Org, TestRuns.Webhook, TestRuns.Body(TestRuns.NewRunId()),
            "k-" + Guid.NewGuid().ToString("N"), null, DateTimeOffset.UtcNow, null, null);
        await relay.Db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State, DeliveryStates.Delivered);
        await relay.Db.StreamAddAsync(RedisKeys.Stream, entry.ToStreamFields());
        await relay.Db.PublishAsync(StackExchange.Redis.RedisChannel.Literal(RedisKeys.WakeChannel), "test");

        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0, Wait, "the copy leaves the stream");

        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount);
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2005]", StringComparison.Ordinal));
        Assert.Equal(DeliveryStates.Delivered, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.State));
    }
}
