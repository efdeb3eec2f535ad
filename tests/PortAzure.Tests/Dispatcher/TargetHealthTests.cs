using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Dispatcher;

public class TargetHealthTests
{
    [Fact]
    public async Task FailingTarget_IsPausedWithoutSpendingAttempts_OthersFlow_ThenResumes()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:TargetHealth:FailureThreshold"] = "3";
            c["Dispatcher:TargetHealth:ProbeIntervalSeconds"] = "1";
            // Without the pause, 10 attempts at <= 0.2 s apart would be spent in about 2 s, inside the 3 s
            // watched below. With it, the runs are held, and a probe refused does not spend its run's attempts (below).
            c["Dispatcher:Retry:MaxAttempts"] = "10";
            c["Dispatcher:Retry:MaxDelaySeconds"] = "0.2";
        });
        await relay.EmulatorApi.ScriptAsync(new { webhook = "broken", failureRate = 1.0, failureStatuses = new[] { 503 } });

        var broken = new List<string>();
        for (var i = 0; i < 4; i++)
        {
            broken.Add(await SendAsync(relay, webhook: "broken"));
        }
        await Eventually.HoldsAsync(async () => await relay.Db.HashExistsAsync(RedisKeys.PausedTargets, $"{TestRuns.Org}/broken"),
            TimeSpan.FromSeconds(10), "the failing target is paused");

        var healthy = await SendAsync(relay, webhook: "healthy");
        await WaitForStateAsync(relay, healthy, DeliveryStates.Delivered);

        using var statsRequest = relay.Operator(HttpMethod.Get, "/api/stats");
        using var statsAnswer = await relay.Ingress.Client.SendAsync(statsRequest);
        Assert.Equal(1, (await statsAnswer.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("pausedTargets").GetInt64());

        await Task.Delay(3000);
        foreach (var id in broken)
        {
            Assert.Equal(DeliveryStates.Retrying, (await DeliveryAsync(relay, id)).GetProperty("state").GetString());
        }

        // Azure recovers: the next probe succeeds and the held deliveries go through.
        using var reset = await relay.Emulator.Client.DeleteAsync("_emulator/behavior");
        foreach (var id in broken)
        {
            await WaitForStateAsync(relay, id, DeliveryStates.Delivered);
        }
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.PausedTargets, $"{TestRuns.Org}/broken"));
    }

    [Fact]
    public async Task PausedTarget_ItsOnlyRunIsTheProbeAgainAndAgain_DoesNotUseUpItsAttempts()
    {
        // One run behind the pause is every probe. Each probe refused spent one of its attempts: it was dead-lettered
        // (retries_exhausted) after MaxAttempts probes, minutes into an outage, while the target was still paused.
        await using var relay = await StartPausingAfterTwoFailuresAsync();
        await relay.EmulatorApi.ScriptAsync(new { webhook = "broken", failureRate = 1.0, failureStatuses = new[] { 503 } });
        var deliveryId = await SendAsync(relay, webhook: "broken");

        // Two tries pause the target; from then on each try is a probe, one every probe interval or so. Over three times
        // MaxAttempts of them, and still retrying.
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 10, TimeSpan.FromSeconds(30), "the paused target is probed with the run");
        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal(DeliveryStates.Retrying, view.GetProperty("state").GetString());
        Assert.True(await relay.Db.HashExistsAsync(RedisKeys.PausedTargets, $"{TestRuns.Org}/broken"));

        using var reset = await relay.Emulator.Client.DeleteAsync("_emulator/behavior");
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
    }

    [Fact]
    public async Task PausedTarget_ProbesRefusedThenTriesThatCount_HeldAgainstTheAttemptsSpentNotEveryTry()
    {
        // The refused probes were numbered with the rest, and the first try that counted after them was held against all:
        // one timed-out try dead-lettered a run that had spent two attempts of four.
        await using var relay = await StartPausingAfterTwoFailuresAsync(maxAttempts: 4);
        await relay.EmulatorApi.ScriptAsync(new { webhook = "broken", failureRate = 1.0, failureStatuses = new[] { 503 } });
        var deliveryId = await SendAsync(relay, webhook: "broken");
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 6, TimeSpan.FromSeconds(30), "the paused target is probed with the run");

        // From now on every try may have started the pipeline: each counts, and two more spend the four.
        await relay.EmulatorApi.ScriptAsync(new { webhook = "broken", failureRate = 1.0, failureStatuses = new[] { 504 } });
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        Assert.Equal(2, (await relay.EmulatorApi.RequestsAsync()).Count(r => r.StatusCode == 504));
        Assert.Equal("retries_exhausted", (await DeliveryAsync(relay, deliveryId)).GetProperty("reason").GetString());
    }

    [Fact]
    public async Task PausedTarget_ProbeRefusedWithRetryAfter_ComesBackNoSoonerThanAsked()
    {
        await using var relay = await StartPausingAfterTwoFailuresAsync();
        await relay.EmulatorApi.ScriptAsync(new { webhook = "broken", failureRate = 1.0, failureStatuses = new[] { 503 }, retryAfter = "3" });
        await SendAsync(relay, webhook: "broken");

        // Two tries pause the target; the third and the fourth are probes, the fourth after the 3 s Azure asked for.
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 4, TimeSpan.FromSeconds(30), "two probes");

        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.True(requests[3].ReceivedAt - requests[2].ReceivedAt >= TimeSpan.FromSeconds(2.9), $"{requests[3].ReceivedAt - requests[2].ReceivedAt} between the probes");
    }

    [Fact]
    public async Task PausedTarget_ProbeAnswerLost_UsesUpTheRunsAttempts()
    {
        // A probe that timed out may have started the pipeline: it counts, as every such try does, so the run is not posted
        // without end.
        await using var relay = await StartPausingAfterTwoFailuresAsync();
        await relay.EmulatorApi.ScriptAsync(new { webhook = "broken", failureRate = 1.0, failureStatuses = new[] { 504 } });
        var deliveryId = await SendAsync(relay, webhook: "broken");

        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);
        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal("retries_exhausted", view.GetProperty("reason").GetString());
        Assert.Equal(3, (await relay.EmulatorApi.RequestsAsync()).Count);
    }

    /// <summary>
    /// A relay whose targets pause after two failures and are probed twice a second; retries start 0.1 s apart and double up
    /// to a minute, so a probe that came back after a backoff grown with its tries would not come back within the tests' waits.
    /// </summary>
    private static Task<Relay> StartPausingAfterTwoFailuresAsync(int maxAttempts = 3) => Relay.StartAsync(c =>
    {
        c["Dispatcher:TargetHealth:FailureThreshold"] = "2";
        c["Dispatcher:TargetHealth:ProbeIntervalSeconds"] = "0.5";
        c["Dispatcher:Retry:MaxAttempts"] = maxAttempts.ToString(System.Globalization.CultureInfo.InvariantCulture);
        c["Dispatcher:Retry:InitialDelaySeconds"] = "0.1";
        c["Dispatcher:Retry:MaxDelaySeconds"] = "60";
    });

    [Fact]
    public async Task PausedTarget_RunOlderThanTheRetryAge_IsDeadLetteredNotHeldAgain()
    {
        // A paused target's deliveries wait without spending attempts, but not past Dispatcher:Retry:MaxAgeHours.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAgeHours"] = "0.5");
        var entry = await QueueAnHourOldRunBehindAPauseAsync(relay);

        await AssertDeadLetteredStillPausedUntriedAsync(relay, entry);
    }

    [Fact]
    public async Task PausedTarget_PauseOutlastsTheRunsRetryAge_IsDeadLetteredAtItsAgeNotPostedAsALaterProbe()
    {
        // Held until the pause's probe time, which lies past the run's age: it was posted then (as the probe, or once the
        // pause ended), later than any retry is scheduled. It is looked at again at its age and, still paused, dead-lettered.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAgeHours"] = "0.5");
        var received = DateTimeOffset.UtcNow.AddMinutes(-30).AddSeconds(20);
        var entry = await QueueAnHourOldRunBehindAPauseAsync(relay, received: received);

        // Held until its age (the pause's probe time is an hour away), not dead-lettered at once: 20 s leave room for a slow
        // first look, which would dead-letter it without the hold.
        await Eventually.HoldsAsync(async () =>
        {
            var view = await DeliveryAsync(relay, entry.DeliveryId);
            return view.GetProperty("state").GetString() == DeliveryStates.Retrying
                && view.TryGetProperty("nextAttemptAt", out var next) && next.ValueKind == System.Text.Json.JsonValueKind.String
                && next.GetDateTimeOffset() <= received.AddMinutes(30).AddSeconds(1);
        }, TimeSpan.FromSeconds(15), "held until its retry age, not the pause's probe time");
        await AssertDeadLetteredStillPausedUntriedAsync(relay, entry);
    }

    [Fact]
    public async Task PausedTarget_RunTriedBeforeOutlivesTheRetryAge_KeepsItsLastAnswerAndItsHint()
    {
        // Tried once (a 500: an inactive webhook), then held behind the pause past the retry age. The dead letter wrote status
        // 0 and no error over the record's, and its hint spoke of the pause alone: "replay once it answers again", which an
        // inactive webhook never does by itself.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAgeHours"] = "0.5");
        var entry = await QueueAnHourOldRunBehindAPauseAsync(relay,
        [
            new(DeliveryRecord.State, DeliveryStates.Retrying), new(DeliveryRecord.Attempts, 1),
            new(DeliveryRecord.LastStatus, 500), new(DeliveryRecord.LastError, ""),
        ]);

        await WaitForStateAsync(relay, entry.DeliveryId, DeliveryStates.DeadLettered);

        var view = await DeliveryAsync(relay, entry.DeliveryId);
        Assert.Equal("retries_exhausted", view.GetProperty("reason").GetString());
        var hint = view.GetProperty("hint").GetString();
        Assert.Contains("stayed paused", hint, StringComparison.Ordinal);
        Assert.Contains("This run's last try: Azure DevOps answered 500", hint, StringComparison.Ordinal);
        Assert.Contains("run the pipeline", hint, StringComparison.Ordinal);
        Assert.Equal(500, view.GetProperty("lastStatus").GetInt32());
        Assert.Equal(1, view.GetProperty("attempts").GetInt32());
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        // Logged once the finish has returned, which the state above may show first.
        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2003]", StringComparison.Ordinal)
            && l.Contains("last status 500", StringComparison.Ordinal))), TimeSpan.FromSeconds(10), "the dead letter's line names the last status");
    }

    private static async Task AssertDeadLetteredStillPausedUntriedAsync(Relay relay, DeliveryEntry entry)
    {
        await WaitForStateAsync(relay, entry.DeliveryId, DeliveryStates.DeadLettered);

        var view = await DeliveryAsync(relay, entry.DeliveryId);
        Assert.Equal("retries_exhausted", view.GetProperty("reason").GetString());
        Assert.Contains("stayed paused", view.GetProperty("hint").GetString(), StringComparison.Ordinal);
        Assert.Equal(0, view.GetProperty("attempts").GetInt32());
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
    }

    /// <summary>
    /// Pauses the test target for an hour and queues a run received an hour ago (or at <paramref name="received"/>), its record
    /// holding <paramref name="record"/> first (an earlier try's outcome).
    /// </summary>
    private static async Task<DeliveryEntry> QueueAnHourOldRunBehindAPauseAsync(Relay relay, StackExchange.Redis.HashEntry[]? record = null,
        DateTimeOffset? received = null)
    {
        await relay.Db.HashSetAsync(RedisKeys.PausedTargets, RedisKeys.Target(TestRuns.Org, TestRuns.Webhook),
            DateTimeOffset.UtcNow.AddHours(1).ToUnixTimeMilliseconds());
        var entry = new DeliveryEntry("d_" + Guid.NewGuid().ToString("N"), TestRuns.Org, TestRuns.Webhook, TestRuns.Body(TestRuns.NewRunId()),
            "k-" + Guid.NewGuid().ToString("N"), null, received ?? DateTimeOffset.UtcNow.AddHours(-1), null, null);
        if (record is not null)
        {
            await relay.Db.HashSetAsync(RedisKeys.Delivery(entry.DeliveryId), record);
        }
        await relay.Db.StreamAddAsync(RedisKeys.Stream, entry.ToStreamFields());
        await relay.Db.PublishAsync(StackExchange.Redis.RedisChannel.Literal(RedisKeys.WakeChannel), "test");
        return entry;
    }
}
