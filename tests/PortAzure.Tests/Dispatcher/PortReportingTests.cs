using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PortAzure.Diagnostics;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Dispatcher;

public class PortReportingTests
{
    private static Task<Relay> StartAsync() => Relay.StartAsync(c => c["Port:ClientId"] = "relay-client");

    [Fact]
    public async Task Delivered_RunWithRunId_LogsALineNamingTargetAndStatus()
    {
        await using var relay = await StartAsync();
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId), TimeSpan.FromSeconds(20), "a Port log line");

        var calls = await relay.EmulatorApi.PortCallsAsync();
        Assert.Contains(calls, c => c.Path == "/v1/auth/access_token" && c.StatusCode == 200);
        var log = Assert.Single(calls, c => c.RunId == runId);
        Assert.Equal($"/v1/actions/runs/{runId}/logs", log.Path);
        Assert.Equal(201, log.StatusCode);
        Assert.True(log.AuthorizationPresent);
        var message = JsonDocument.Parse(log.BodyText!).RootElement;
        Assert.Contains($"{TestRuns.Org}/{TestRuns.Webhook}", message.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.Contains("HTTP 200", message.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.False(message.TryGetProperty("terminationStatus", out _));
    }

    [Fact]
    public async Task Delivered_HttpClientLoggingAtTrace_PortsBearerTokenIsNotLogged()
    {
        // HttpClient's Trace lines mask a header in their text and keep it in their fields, which an OTLP exporter sends.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Logging:LogLevel:System.Net.Http.HttpClient"] = "Trace";
        });
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(20), "the report is sent to Port with the token");

        // The Azure client's header lines are captured, fields and all: the check below can see a header.
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.StartsWith("Trace System.Net.Http.HttpClient.", StringComparison.Ordinal)
            && l.Contains("X-Port-Signature=[", StringComparison.Ordinal));
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("Bearer", StringComparison.OrdinalIgnoreCase));
    }

    [Theory]
    [InlineData("v1")]
    [InlineData("v1/")]
    public async Task Delivered_ApiBaseUrlEndingInV1_CallsTheApiAtItsRoot(string path)
    {
        // Port's docs write the base URL with /v1; the relay's calls carry /v1 themselves and must not double it.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Port:ApiBaseUrl"] = c["Port:ApiBaseUrl"]!.TrimEnd('/') + "/" + path;
        });
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId), TimeSpan.FromSeconds(20), "a Port log line");

        var calls = await relay.EmulatorApi.PortCallsAsync();
        Assert.Contains(calls, c => c.Path == "/v1/auth/access_token" && c.StatusCode == 200);
        Assert.Equal(201, Assert.Single(calls, c => c.RunId == runId && c.Path == $"/v1/actions/runs/{runId}/logs").StatusCode);
    }

    [Fact]
    public async Task Delivered_PortReportsKeyDamaged_IsRecordedOnceAndSaysTheReportWasLost()
    {
        // The report's write failed the finish: the run was never recorded delivered, and each reclaim posted it again.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            // Reclaimed 3 s after a failed finish (1 s of retries): within the test, a second POST if the finish fails.
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:FinishRetrySeconds"] = "1";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        });
        await relay.Db.StringSetAsync(RedisKeys.PortReports, "damaged");

        var deliveryId = await SendAsync(relay, TestRuns.NewRunId());
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(20), "the run is recorded delivered");
        await Task.Delay(TimeSpan.FromSeconds(5));

        Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2218]", StringComparison.Ordinal) && l.Contains(deliveryId, StringComparison.Ordinal));
    }

    [Fact]
    public async Task DeadLettered_Run_LogsTheHintAndTerminatesWithFailure()
    {
        await using var relay = await StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 } } });
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId), TimeSpan.FromSeconds(20), "a Port log line");

        var log = Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
        var message = JsonDocument.Parse(log.BodyText!).RootElement;
        Assert.Equal("FAILURE", message.GetProperty("terminationStatus").GetString());
        Assert.False(string.IsNullOrEmpty(message.GetProperty("statusLabel").GetString()));
        Assert.Contains("organisation name", message.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task DeadLetteredAgainAfterAReplay_TheRunAlreadyEnded_IsNotCountedAsAFailedReport()
    {
        // Port locks a run at its first final status; a second FAILURE (here after a replay; also a retry of a try whose
        // answer was lost) is refused. That is the run's report arriving twice, not a report lost.
        await using var relay = await StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 }, new { status = 404 } } });
        var runId = TestRuns.NewRunId();
        var deliveryId = await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(20), "the first FAILURE");

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.RunId == runId) == 2,
            TimeSpan.FromSeconds(20), "the second FAILURE");
        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2210]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), "the run already ended, logged");

        Assert.Equal(422, (await relay.EmulatorApi.PortCallsAsync()).Last(c => c.RunId == runId).StatusCode);
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2202]", StringComparison.Ordinal));
        await WaitForPortReportAsync(relay, deliveryId, "already_ended");
    }

    [Fact]
    public async Task DeadLettered_TerminationTurnedOff_LogsTheHintAndLeavesTheRunOpen()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Port:TerminateRunOnDeadLetter"] = "false";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 } } });
        var runId = TestRuns.NewRunId();

        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId), TimeSpan.FromSeconds(20), "a Port log line");

        var log = Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
        Assert.Equal(201, log.StatusCode);
        var message = JsonDocument.Parse(log.BodyText!).RootElement;
        Assert.Contains("organisation name", message.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.False(message.TryGetProperty("terminationStatus", out _));
        Assert.False(message.TryGetProperty("statusLabel", out _));
    }

    [Fact]
    public async Task TokenIsCached_AcrossManyReports()
    {
        await using var relay = await StartAsync();
        var runIds = Enumerable.Range(0, 10).Select(_ => TestRuns.NewRunId()).ToList();

        foreach (var runId in runIds)
        {
            await SendAsync(relay, runId);
        }
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.RunId is not null) == 10, TimeSpan.FromSeconds(20), "10 log lines");

        // One token for the ten reports, asked for with the relay's client id. (That the secret reaches no log line is
        // checked by every test host when it stops.)
        var token = Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.Path == "/v1/auth/access_token");
        Assert.Contains("\"clientId\":\"relay-client\"", token.BodyText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PortApiDown_DeliveryIsUnaffected_ReportPendingUntilSentOnceBack()
    {
        await using var relay = await StartAsync();
        var runId = TestRuns.NewRunId();

        var deliveryId = await DeliveredWhilePortIsDownAsync(relay, runId);
        Assert.Single(await relay.EmulatorApi.DeliveredAsync());
        Assert.DoesNotContain(await relay.EmulatorApi.PortCallsAsync(), c => c.StatusCode is >= 200 and < 300);
        var pending = await PortReportViewAsync(relay, deliveryId);
        Assert.Equal("pending", pending.GetProperty("state").GetString());
        var written = pending.GetProperty("at").GetDateTimeOffset();
        Assert.Equal(written, (await DeliveryAsync(relay, deliveryId)).GetProperty("deliveredAt").GetDateTimeOffset());

        var backAt = DateTimeOffset.UtcNow;
        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(20), "the report is retried once Port is back");
        Assert.Single(await relay.EmulatorApi.DeliveredAsync());
        await WaitForPortReportAsync(relay, deliveryId, "sent");
        Assert.InRange((await PortReportViewAsync(relay, deliveryId)).GetProperty("at").GetDateTimeOffset(), backAt.AddSeconds(-1), DateTimeOffset.UtcNow.AddSeconds(1));
        // The record no longer names a report in the stream, and keeps the expiry of a delivered one.
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));
        Assert.NotNull(await relay.Db.KeyTimeToLiveAsync(RedisKeys.Delivery(deliveryId)));
    }

    [Fact]
    public async Task PortApiDown_ReplayOfAReportedDeadLetter_TheRecordShowsTheReplaysReportUntilItEnds()
    {
        // The dead letter's report sent, then the replay's written: the record shows the replay's, the delivery's last word
        // to Port, not how the dead letter's ended. (Both waiting at once, the dead letter's ending alone leaves the record to
        // the replay's: PortApiDown_ReportTrimmedFromTheStreamDuringTheWait_IsReportedLostNotTakenOver.)
        await using var relay = await StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 } } });
        var deliveryId = await SendAsync(relay, TestRuns.NewRunId());
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);
        await WaitForPortReportAsync(relay, deliveryId, "sent");

        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        answer.EnsureSuccessStatusCode();
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        var written = Assert.Single(await relay.Db.StreamRangeAsync(RedisKeys.PortReports));
        Assert.Equal(written.Id, await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReport));
        Assert.Equal("pending", (await PortReportViewAsync(relay, deliveryId)).GetProperty("state").GetString());

        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });
        await WaitForPortReportAsync(relay, deliveryId, "sent");
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));
    }

    [Fact]
    public async Task PortApiDown_RecordGoneBeforeTheReportIsSent_IsNotWrittenAgain()
    {
        // A delivered record expires after the retention; a report still waiting then must not bring it back (without expiry).
        await using var relay = await StartAsync();
        var runId = TestRuns.NewRunId();
        var deliveryId = await DeliveredWhilePortIsDownAsync(relay, runId);

        await relay.Db.KeyDeleteAsync(RedisKeys.Delivery(deliveryId));
        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(20), "the report sent and removed");

        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId && c.StatusCode == 201);
        Assert.False(await relay.Db.KeyExistsAsync(RedisKeys.Delivery(deliveryId)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PortApiDown_DispatcherStopsWithTheReportUnsent_NextDispatcherSendsItOnce(bool newerReportWritten)
    {
        // The default 900 s before a takeover: the report is handed back at the stop, not left pending.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client");
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var runId = TestRuns.NewRunId();
        var deliveryId = await SendAsync(relay, runId);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0, TimeSpan.FromSeconds(10), "a first, failing call to Port");
        var written = Assert.Single(await relay.Db.StreamRangeAsync(RedisKeys.PortReports)).Id.ToString();
        const string Newer = "99999999999999-0";
        if (newerReportWritten)
        {
            // As if a replay's report had been written since: the record is that one's, and stays so.
            await relay.Db.HashSetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry, Newer);
        }

        // Stopped while its report is still being retried: it stays in Redis, given back for any reporter to read.
        var stopped = relay.Dispatcher;
        await relay.StopDispatcherAsync(stopped);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        Assert.Contains(stopped.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));
        // A new entry, which keeps the first one's time: hand-backs do not restart the report's retry age.
        var handedBack = Assert.Single(await relay.Db.StreamRangeAsync(RedisKeys.PortReports));
        Assert.NotEqual(written, handedBack.Id.ToString());
        Assert.Equal(written.Split('-')[0], (string?)handedBack["since"]);
        // The record follows it: still pending, not read as gone from the stream.
        Assert.Equal(newerReportWritten ? Newer : handedBack.Id, await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));

        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });
        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(20), "the next Dispatcher reads the report at once and sends it");
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(10), "the sent report leaves Redis");
        // Ended on its record by the new entry's removal; the record of a newer report is left to that one.
        Assert.Equal(newerReportWritten ? Newer : RedisValue.Null, await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));
        Assert.Equal(newerReportWritten ? RedisValue.Null : "sent", await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReport));

        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId && c.StatusCode == 201);
        Assert.Single(await relay.EmulatorApi.DeliveredAsync());
        // The default reclaim time (900 s) is long enough: nothing to say.
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2215]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PortCallUnderWay_ReportTrimmedAndReapedMeanwhile_TheRecordShowsItSent()
    {
        // Over 100,000 reports waiting, the stream trims the oldest, and any reporter's takeover (Redis 7's XAUTOCLAIM) drops
        // the trimmed ones from the pending list: this one while Port was taking it.
        await using var relay = await StartAsync();
        await relay.EmulatorApi.PortBehaviorAsync(new { delayMs = 2_000 });
        var runId = TestRuns.NewRunId();
        var deliveryId = await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId),
            TimeSpan.FromSeconds(20), "the report's call reaches Port and waits for its answer");

        var entry = Assert.Single(await relay.Db.StreamRangeAsync(RedisKeys.PortReports));
        await relay.Db.StreamDeleteAsync(RedisKeys.PortReports, [entry.Id]);
        var reaped = await relay.Db.StreamAutoClaimAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "another-reporter", 0, "0-0", 10);
        Assert.Equal([entry.Id], reaped.DeletedIds);
        Assert.Equal("trimmed", (await PortReportViewAsync(relay, deliveryId)).GetProperty("state").GetString());

        await WaitForPortReportAsync(relay, deliveryId, "sent");
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReportEntry));
    }

    [Fact]
    public async Task PortCallHangsAtTheStop_TheStopCutsItShortAndHandsTheReportBack()
    {
        // A call to Port under way at the stop gets 3 s, not the 30 s Port takes here to answer: the Dispatcher stops in
        // time for the platform's grace period, and the report it cut short goes back to the stream for any reporter.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client");
        await relay.EmulatorApi.PortBehaviorAsync(new { delayMs = 30_000 });
        var runId = TestRuns.NewRunId();
        await SendAsync(relay, runId);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId), TimeSpan.FromSeconds(20),
            "the report's call reaches Port and waits for its answer");

        var stopped = relay.Dispatcher;
        var stopping = Stopwatch.StartNew();
        await relay.StopDispatcherAsync(stopped);
        stopping.Stop();

        // The call was given its 3-s grace and then cut by the stop: not at once, and not by the Port client's own 15-s
        // timeout, which would log the failed call (2204, Debug) that a cut call does not.
        Assert.True(stopping.Elapsed >= TimeSpan.FromSeconds(2.5) && stopping.Elapsed < TimeSpan.FromSeconds(12), $"the stop took {stopping.Elapsed.TotalSeconds:F1} s");
        Assert.DoesNotContain(stopped.Logs.Lines, l => l.Contains("[2204]", StringComparison.Ordinal));
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        Assert.Contains(stopped.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));

        // The next Dispatcher sends it at once: Port's log shows it twice, as documented for a call cut short.
        await relay.EmulatorApi.PortBehaviorAsync(new { delayMs = 0 });
        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(20),
            "the handed-back report is sent and leaves Redis");
        Assert.Equal(2, (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.RunId == runId));
    }

    [Fact]
    public async Task ReportOfACrashedReporter_IsTakenOverAfterTheReclaimTime_AndSentOnce()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Dispatcher:PortReportReclaimSeconds"] = "2";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        // A reporter read the report and died without a trace: it is pending under a consumer that never comes back.
        var runId = TestRuns.NewRunId();
        var deliveryId = "d_" + Guid.NewGuid().ToString("N");
        var report = new PortAzure.Dispatcher.PortReporting.PortReport(runId, deliveryId, "delivered (test)", null, null);
        using var spans = new ReportSpans();
        await relay.Db.StreamCreateConsumerGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "0-0", createStream: true);
        await relay.Db.StreamAddAsync(RedisKeys.PortReports, report.ToStreamFields());
        // Before the read: the time measured from it is never shorter than the entry's idle time.
        var readAt = DateTimeOffset.UtcNow;
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "crashed-reporter", ">", 1));

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201),
            TimeSpan.FromSeconds(20), "another reporter takes the report over and sends it");
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(10), "the sent report leaves Redis");

        var sent = Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
        Assert.True(sent.ReceivedAt - readAt >= TimeSpan.FromSeconds(1.9), $"taken over after {(sent.ReceivedAt - readAt).TotalSeconds:F1} s, before the reclaim time (2 s)");
        // Allowed, as here, but said: in production a report still being retried would be sent twice.
        Assert.Single(relay.Dispatcher.Logs.Lines, l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains("[2215]", StringComparison.Ordinal));
        // Its tries start again from 1 here: the span says it was taken over.
        var taken = Assert.Single(spans.Of(deliveryId));
        Assert.Equal(1, taken.GetTagItem("portazure.attempt"));
        Assert.Equal(true, taken.GetTagItem("portazure.reclaimed"));
    }

    [Fact]
    public async Task Restart_ConsumerNameConfigured_ReportsItHeldAreSentWithoutWaitingForTheReclaimTime()
    {
        // A Dispatcher that crashed holding a report, started again under the same name (a StatefulSet's pod): the report is
        // pending for it, and waited the reclaim time (15 min by default) for a takeover.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        await relay.Db.StreamCreateConsumerGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "0-0", createStream: true);
        var runId = TestRuns.NewRunId();
        await relay.Db.StreamAddAsync(RedisKeys.PortReports, new PortAzure.Dispatcher.PortReporting.PortReport(runId, "d_held", "delivered (test)", null, null).ToStreamFields());
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "dispatcher-0", ">", 1));

        await relay.AddDispatcherAsync(c =>
        {
            c["Dispatcher:ConsumerName"] = "dispatcher-0";
            c["Dispatcher:PortReportReclaimSeconds"] = "60";
        });

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201)
            && (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount == 0,
            TimeSpan.FromSeconds(20), "the held report sent and removed well before the reclaim time (60 s)");
        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
    }

    [Fact]
    public async Task ReportOfACrashedReporter_WallClockSteppedBack_IsStillTakenOver()
    {
        // The next takeover was a wall-clock time: stepped back an hour, no takeover for an hour.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Dispatcher:PortReportReclaimSeconds"] = "2";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        var clock = new SteppedClock();
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        // The reporter's first rounds, and its first takeover, on the fake clock; then the step.
        for (var i = 0; i < 20; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(50);
        }
        clock.StepBack(TimeSpan.FromHours(1));
        var runId = TestRuns.NewRunId();
        await relay.Db.StreamAddAsync(RedisKeys.PortReports, new PortAzure.Dispatcher.PortReporting.PortReport(runId, "d_crashed", "delivered (test)", null, null).ToStreamFields());
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "crashed-reporter", ">", 1));

        var sent = false;
        for (var i = 0; i < 300 && !sent; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(50);
            sent = (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == runId && c.StatusCode == 201);
        }

        Assert.True(sent, "the crashed reporter's report was taken over and sent (reclaim time 2 s, 15 s waited)");
    }

    [Fact]
    public async Task ReportOfACrashedReporter_TrimmedBeforeTheTakeover_IsReportedLost()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Dispatcher:PortReportReclaimSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        var report = new PortAzure.Dispatcher.PortReporting.PortReport(TestRuns.NewRunId(), "d_crashed", "delivered (test)", null, null);
        await relay.Db.StreamCreateConsumerGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "0-0", createStream: true);
        var id = await relay.Db.StreamAddAsync(RedisKeys.PortReports, report.ToStreamFields());
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, "crashed-reporter", ">", 1));
        await relay.Db.StreamDeleteAsync(RedisKeys.PortReports, [id]);

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2212]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(20), "the takeover finds the report trimmed");

        Assert.Empty(await relay.EmulatorApi.PortCallsAsync());
    }

    [Fact]
    public async Task PortApiDown_ReportWithThousandsOfFieldsUnsentAtTheStop_IsLeftPendingNotLost()
    {
        // Not the relay's (a report has a dozen fields): Lua cannot unpack this many into the hand-back's XADD, and a
        // hand-back that failed after its XACK would leave the report in the stream, read by nobody.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var runId = TestRuns.NewRunId();
        NameValueEntry[] fields = [.. new PortAzure.Dispatcher.PortReporting.PortReport(runId, "d_wide", "delivered (test)", null, null).ToStreamFields(),
            .. Enumerable.Range(0, 5_000).Select(i => new NameValueEntry($"extra{i}", "x"))];
        await relay.Db.StreamAddAsync(RedisKeys.PortReports, fields);
        // Started after the report was written: its first read takes it.
        var stopped = await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0
            && (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount == 1,
            TimeSpan.FromSeconds(20), "the report read, and a first, failing call to Port");

        await relay.StopDispatcherAsync(stopped);

        // Left pending, for the takeover (PortReportReclaimSeconds) to send.
        Assert.Equal(1, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.DoesNotContain(stopped.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PortApiDown_ReportTakenOverWhileItsReporterWaited_IsNotHandedBackAtTheStop()
    {
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client");
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var deliveryId = await SendAsync(relay, TestRuns.NewRunId());
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0, TimeSpan.FromSeconds(10), "a first, failing call to Port");

        // Another reporter takes the report over while this one waits to retry (as one would after the reclaim time).
        await TakeOverReportAsync(relay, "other-reporter");

        var stopped = relay.Dispatcher;
        await relay.StopDispatcherAsync(stopped);

        // Still the other reporter's, and only once in the stream: no copy handed back beside it.
        Assert.Equal("other-reporter", (await PendingReportAsync(relay)).ConsumerName);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.DoesNotContain(stopped.Logs.Lines, l => l.Contains("[2208]", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PortApiDown_ReportTrimmedFromTheStreamDuringTheWait_IsReportedLostNotTakenOver(bool newerReportWritten)
    {
        // The stream keeps about the newest 100,000 reports; the oldest, trimmed first, are the ones waiting longest.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var clock = await FirstReportCallFailedAsync(relay);

        var entry = Assert.Single(await relay.Db.StreamRangeAsync(RedisKeys.PortReports));
        var record = RedisKeys.Delivery((string)entry["id"]!);
        Assert.Equal(entry.Id, await relay.Db.HashGetAsync(record, DeliveryRecord.PortReportEntry));
        const string Newer = "99999999999999-0";
        if (newerReportWritten)
        {
            // As if a replay's report had been written since: this one ending leaves the record to that one.
            await relay.Db.HashSetAsync(record, DeliveryRecord.PortReportEntry, Newer);
        }
        await relay.Db.StreamDeleteAsync(RedisKeys.PortReports, [entry.Id]);
        var deletedAt = clock.GetUtcNow();
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2211]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(20), "the reporter sees the report is gone");

        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2209]", StringComparison.Ordinal));
        Assert.Equal(0, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
        // The touch that found it gone ended it on the record, before the reporter logged it. (Read in Redis: the Ingress
        // of a relay started without Dispatchers routes the operator API to none.)
        if (newerReportWritten)
        {
            Assert.Equal(Newer, (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.PortReportEntry));
            Assert.False(await relay.Db.HashExistsAsync(record, DeliveryRecord.PortReport));
            Assert.InRange((long)await relay.Db.HashGetAsync(record, DeliveryRecord.PortReportAt), 1, deletedAt.ToUnixTimeMilliseconds());
        }
        else
        {
            Assert.Equal("trimmed", (string?)await relay.Db.HashGetAsync(record, DeliveryRecord.PortReport));
            Assert.InRange((long)await relay.Db.HashGetAsync(record, DeliveryRecord.PortReportAt),
                deletedAt.ToUnixTimeMilliseconds(), clock.GetUtcNow().ToUnixTimeMilliseconds());
            Assert.False(await relay.Db.HashExistsAsync(record, DeliveryRecord.PortReportEntry));
        }
    }

    [Fact]
    public async Task PortApiDown_ReportTakenOverDuringTheWait_ItsFirstReporterLeavesItToTheOther()
    {
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var clock = await FirstReportCallFailedAsync(relay);

        // While the reporter waits on the stopped clock, another takes the report over (as after the reclaim time).
        await TakeOverReportAsync(relay, "other-reporter");
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2209]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(20), "the first reporter sees the report is no longer its own");

        // It neither took the report back nor called Port for it again.
        Assert.Equal("other-reporter", (await PendingReportAsync(relay)).ConsumerName);
        Assert.Single(await relay.EmulatorApi.PortCallsAsync());
    }

    [Fact]
    public async Task PortApiDown_ReporterStillRetrying_ResetsTheReportsIdleTimeAfterEachWait()
    {
        // Another Dispatcher takes over a report idle for PortReportReclaimSeconds; this one is idle only
        // while its reporter waits, and the reporter must say it is still alive after each wait.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var clock = await FirstReportCallFailedAsync(relay);
        var callsBefore = (await relay.EmulatorApi.PortCallsAsync()).Count;

        // Real time passes while the reporter waits out its back-off on the stopped clock.
        await Task.Delay(TimeSpan.FromSeconds(5));
        var idleDuringWait = await ReportIdleMillisecondsAsync(relay);
        Assert.InRange(idleDuringWait, 4_900, long.MaxValue);
        // Small steps again: one 1 s step could come before the reporter has started its wait, which would then never end.
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => (await relay.EmulatorApi.PortCallsAsync()).Count > callsBefore,
            TimeSpan.FromSeconds(20), "the second attempt, made after the wait");

        // Only the reporter's touch after its wait can bring the idle time down.
        await Eventually.HoldsAsync(async () => await ReportIdleMillisecondsAsync(relay) < idleDuringWait - 1_000,
            TimeSpan.FromSeconds(10), () => $"the idle time ({idleDuringWait} ms during the wait) is reset after it");
    }

    [Fact]
    public async Task PortRefusesTheCredentials_LongerThanTheReportsAttempts_ReportsWaitAndAreSentOnceAccepted()
    {
        // A secret rotation under way, or a typo being fixed: not an outage, and not the reports' fault.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var (runIds, clock) = await ReportsQueuedAsync(relay, new { failNext = 1000, status = 401 });
        // The reporter polls on the fake clock: small steps until its first call.
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0,
            TimeSpan.FromSeconds(20), "a first token call");
        // The emulator records a call before it answers: wait for the Dispatcher to have taken the refusal in.
        await Eventually.HoldsAsync(async () => relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2206]", StringComparison.Ordinal)) && await HealthAsync(relay) == "Degraded",
            TimeSpan.FromSeconds(10), "the refusal is logged and /health is Degraded");

        // Three reports asked for a token at once: one call to Port, one Warning (the refusal is kept for 30 s).
        Assert.Single(await relay.EmulatorApi.PortCallsAsync());
        Assert.Single(relay.Dispatcher.Logs.Lines, l => l.Contains("[2206]", StringComparison.Ordinal));

        // Far past a report's 8 attempts (~4 min of waits): the clock moves in 5 s steps until Port has refused ten
        // token calls (one a minute); nothing is given up meanwhile.
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () => (await relay.EmulatorApi.PortCallsAsync()).Count >= 10,
            TimeSpan.FromSeconds(90), "ten refused token calls");
        Assert.Equal(3, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));

        await PortAcceptsAgainThenEverySentAsync(relay, clock, runIds, "every report is sent once Port accepts the credentials");
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(10), "the reports leave the stream");
        var calls = await relay.EmulatorApi.PortCallsAsync();
        Assert.All(runIds, runId => Assert.Single(calls, c => c.RunId == runId));
        await Eventually.HoldsAsync(async () => await HealthAsync(relay) == "Healthy", TimeSpan.FromSeconds(10), "/health is Healthy again");
    }

    [Fact]
    public async Task PortRateLimits_ReportsWaitOutRetryAfterTogether_WithoutSpendingAttempts()
    {
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        // A first report, so that the token is cached and the rate limit below meets the log calls.
        var first = TestRuns.NewRunId();
        await SendAsync(relay, first);
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.RunId == first && c.StatusCode == 201),
            TimeSpan.FromSeconds(30), "the first report is sent");

        await relay.EmulatorApi.PortBehaviorAsync(new { failNext = 10_000, status = 429, retryAfterSeconds = 60 });
        var runIds = new[] { TestRuns.NewRunId(), TestRuns.NewRunId(), TestRuns.NewRunId() };
        foreach (var runId in runIds)
        {
            await SendAsync(relay, runId);
        }
        async Task<int> ThrottledCallsAsync() => (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.StatusCode == 429);
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => await ThrottledCallsAsync() > 0,
            TimeSpan.FromSeconds(30), "a first call answered 429");
        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2207]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), "the rate limit is logged");

        // Inside Retry-After nobody calls: before, each report kept its own schedule (1, 2, 5, 15, 30 s: five calls each).
        // The clock stands still for half a second first: calls already under way when the first 429 came are recorded.
        await Task.Delay(500);
        var atStart = await ThrottledCallsAsync();
        for (var i = 0; i < 11; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(5));
            await Task.Delay(30);
        }
        // Half a second for what the last steps set going to reach the emulator: a "nothing happened" check 30 ms after
        // the last step would pass on a loaded machine before the calls it should catch were sent.
        await Task.Delay(500);
        Assert.Equal(atStart, await ThrottledCallsAsync());

        // Past eight windows, more than a report's eight attempts: each report has been refused again and again and
        // is still in the stream.
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () =>
        {
            var calls = await relay.EmulatorApi.PortCallsAsync();
            return runIds.All(r => calls.Count(c => c.RunId == r && c.StatusCode == 429) >= 9);
        }, TimeSpan.FromSeconds(120), "every report refused nine times");
        Assert.Equal(3, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        // Over 8 min with nothing taken: an operator learns of it as of an outage.
        Assert.Equal("Degraded", await HealthAsync(relay));
        Assert.Single(relay.Dispatcher.Logs.Lines, l => l.Contains("[2213]", StringComparison.Ordinal));

        await PortAcceptsAgainThenEverySentAsync(relay, clock, runIds, "every report is sent once Port lets the relay call again");
        var final = await relay.EmulatorApi.PortCallsAsync();
        Assert.All(runIds, runId => Assert.Single(final, c => c.RunId == runId && c.StatusCode == 201));
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2202]", StringComparison.Ordinal));
        Assert.Equal("Healthy", await HealthAsync(relay));
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2214]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PortRateLimitsWithALongRetryAfter_OneReportInAQuietPeriod_HealthIsDegraded()
    {
        // Tries 5 min apart (Retry-After: 300), past the outage's 3-min gap: each started a new "outage" that never lasted
        // 5 min, and /health stayed Healthy while nothing reached Port.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        await relay.EmulatorApi.PortBehaviorAsync(new { failNext = 10_000, status = 429, retryAfterSeconds = 300 });
        await SendAsync(relay, TestRuns.NewRunId());
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => (await relay.EmulatorApi.PortCallsAsync()).Any(c => c.StatusCode == 429),
            TimeSpan.FromSeconds(30), "a first call answered 429");

        // Degraded 5 min after the first try, still inside its wait; the Warning comes with the second try.
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () => await HealthAsync(relay) == "Degraded", TimeSpan.FromSeconds(60), "Degraded");
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2213]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(30), "the outage Warning");
        Assert.Equal(2, (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.StatusCode == 429));
        Assert.Equal("Degraded", await HealthAsync(relay));
    }

    [Fact]
    public async Task PortApiDown_LongerThanTheReportsAttempts_ReportsWaitAndAreSentOnceBack()
    {
        // Port (its token endpoint here) failing every call is an outage, not the reports' fault: counted per try, one of
        // ~4 min lost the report of every run that finished during it.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var (runIds, clock) = await ReportsQueuedAsync(relay, new { failNext = 100_000, status = 503 });

        // Far past a report's 8 attempts: 30 failed calls, ten tries per report (about 10 min of waits).
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () => (await relay.EmulatorApi.PortCallsAsync()).Count >= 30,
            TimeSpan.FromSeconds(120), "thirty failed calls");
        Assert.Equal(3, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2202]", StringComparison.Ordinal));
        // Said once, and shown on /health after 5 min: no failure count moves while reports wait.
        Assert.Single(relay.Dispatcher.Logs.Lines, l => l.Contains("[2213]", StringComparison.Ordinal));
        Assert.Equal("Degraded", await HealthAsync(relay));

        await PortAcceptsAgainThenEverySentAsync(relay, clock, runIds, "every report is sent once Port is back");
        var calls = await relay.EmulatorApi.PortCallsAsync();
        Assert.All(runIds, runId => Assert.Single(calls, c => c.RunId == runId && c.StatusCode == 201));
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2214]", StringComparison.Ordinal));
        Assert.Equal("Healthy", await HealthAsync(relay));
    }

    [Fact]
    public async Task PortSlow_PortMaxConcurrentCallsTwo_TwoCallsAtOnceAndNoMore()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Dispatcher:PortMaxConcurrentCalls"] = "2";
        }, dispatchers: 0);
        // Each call about a run is answered 1 s after it arrives (recorded on arrival).
        await relay.EmulatorApi.PortBehaviorAsync(new { delayMs = 1000 });
        var runIds = Enumerable.Range(0, 6).Select(_ => TestRuns.NewRunId()).ToList();
        foreach (var runId in runIds)
        {
            await SendAsync(relay, runId);
        }

        await relay.AddDispatcherAsync();

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count(c => c.RunId is not null && c.StatusCode == 201) == 6,
            TimeSpan.FromSeconds(60), "every report sent");
        var arrivals = (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.RunId is not null).Select(c => c.ReceivedAt).Order().ToList();
        Assert.Equal(6, arrivals.Count);
        // Two at a time: a third call arrives only once one of the two before it was answered; and two go together (one
        // at a time, each call would arrive a whole answer's 1 s after the one before it; 800 ms leaves room for a slow
        // machine).
        Assert.All(Enumerable.Range(2, arrivals.Count - 2), i => Assert.True(arrivals[i] - arrivals[i - 2] >= TimeSpan.FromMilliseconds(900),
            $"calls {i - 2} and {i} arrived {(arrivals[i] - arrivals[i - 2]).TotalMilliseconds} ms apart"));
        Assert.Contains(Enumerable.Range(1, arrivals.Count - 1), i => arrivals[i] - arrivals[i - 1] < TimeSpan.FromMilliseconds(800));
    }

    [Fact]
    public async Task PortFailsTwentyRunsEachForItself_TheReportsBehindThemAreStillSent()
    {
        // Twenty reports failing each for its own reason, and nothing taken while they wait: it looks like an outage.
        // More than the 16 calls at once: when waiting reports held the call slots, the reports behind them waited up to
        // the retry age. Waiting reports hold no call; each report Port takes makes the stuck ones spend an attempt.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        await relay.EmulatorApi.PortBehaviorAsync(new { failRun = "r_stuck", status = 500 });
        for (var i = 0; i < 20; i++)
        {
            await SendAsync(relay, "r_stuck" + Guid.NewGuid().ToString("N")[..12]);
        }
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 20,
            TimeSpan.FromSeconds(30), "twenty reports queued");
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(200), async () => (await relay.EmulatorApi.PortCallsAsync()).Select(c => c.RunId).Distinct().Count(r => r is not null) >= 20,
            TimeSpan.FromSeconds(60), "every stuck report tried");
        var behind = new[] { TestRuns.NewRunId(), TestRuns.NewRunId(), TestRuns.NewRunId() };
        foreach (var runId in behind)
        {
            await SendAsync(relay, runId);
        }

        await StepUntilAsync(clock, TimeSpan.FromSeconds(1), async () =>
        {
            var sent = (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.StatusCode == 201).Select(c => c.RunId).ToHashSet();
            return behind.All(sent.Contains);
        }, TimeSpan.FromSeconds(60), "the reports behind the stuck ones are sent");

        Assert.Equal(20, (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount);
    }

    [Fact]
    public async Task PortRefusesOneRunInAQuietPeriod_HealthIsDegradedWhileItWaitsAndHealthyOnceItIsGivenUp()
    {
        // Alone, a report Port refuses looks like an outage (nothing else is taken): /health says so after 5 min. Once
        // it is given up (the retry age, 12 min here) nothing fails any more, and /health is Healthy within 3 min, though
        // Port took no report since.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientId"] = "relay-client";
            c["Dispatcher:Retry:MaxAgeHours"] = "0.2";
        }, dispatchers: 0);
        var runId = TestRuns.NewRunId();
        await relay.EmulatorApi.PortBehaviorAsync(new { failRun = runId, status = 503 });
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        await SendAsync(relay, runId);

        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () => await HealthAsync(relay) == "Degraded", TimeSpan.FromSeconds(60), "Degraded while it waits");
        // Said once, at its first failure past 5 min (not at its first: a blip is not worth a Warning).
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2213]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(60), "the outage Warning");
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2202]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(60), "the report given up at the retry age");
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () => await HealthAsync(relay) == "Healthy", TimeSpan.FromSeconds(60), "Healthy again");
        Assert.Single(relay.Dispatcher.Logs.Lines, l => l.Contains("[2213]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task DeadLettered_PortAnswers422WithoutSayingTheRunIsLocked_IsAFailedReport()
    {
        // 422 is also Port's answer to a body its schema refuses: only one that says the run is locked is "already ended".
        await using var relay = await StartAsync();
        var runId = TestRuns.NewRunId();
        await relay.EmulatorApi.PortBehaviorAsync(new { failRun = runId, status = 422 });
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 } } });
        using var spans = new ReportSpans();

        var deliveryId = await SendAsync(relay, runId);

        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2202]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(20), "the report is given up");
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2210]", StringComparison.Ordinal));
        Assert.Single(await relay.EmulatorApi.PortCallsAsync(), c => c.RunId == runId);
        await WaitForPortReportAsync(relay, deliveryId, "failed");
        var last = spans.AssertLastSaysGivenUp(deliveryId, "rejected", "rejected");
        // Its line is under the run's trace.
        Assert.Equal(last.TraceId.ToHexString(), Assert.Single(relay.Dispatcher.Logs.TracedLines,
            l => l.Line.Contains("[2202]", StringComparison.Ordinal) && l.Line.Contains(deliveryId, StringComparison.Ordinal)).TraceId);
    }

    [Fact]
    public async Task PortTokenEndpointFails_TheSendsQueuedBehindTheFailedCallDoNotCallAgain()
    {
        // While Port's token endpoint times out, each send queued on the token lock waited out its own 15 s call: a try
        // took minutes. After a failed token call the sends behind it fail at once (for 5 s).
        using var spans = new ReportSpans();
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var (runIds, clock) = await ReportsQueuedAsync(relay, new { failNext = 1000, status = 503 });
        List<(string RunId, string Outcome)> Tries() =>
            [.. spans.OfRuns(runIds).Select(a => ((string)a.GetTagItem("portazure.run_id")!, (string)a.GetTagItem("portazure.outcome")!))];

        // Until the reporter has read all three too: one read after the steps stopped would still wait out the pause, but
        // one read 5 s of steps later would call.
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0
                && (await relay.Db.StreamPendingAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup)).PendingMessageCount == 3,
            TimeSpan.FromSeconds(20), "a first token call, and the three reports read");
        // The clock stands still, so the pause does not end: the other two first tries (queued on the token lock, each
        // within milliseconds without the pause) make no call, and are not counted as failures.
        await Eventually.HoldsAsync(() => Task.FromResult(runIds.All(r => Tries().Any(t => t.RunId == r))), TimeSpan.FromSeconds(10), "each report's first try");

        Assert.Single(await relay.EmulatorApi.PortCallsAsync());
        var tries = Tries();
        var outcomes = runIds.Select(r => tries.First(t => t.RunId == r).Outcome).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["not_tried", "not_tried", "retry_later"], outcomes);
        // Why, for whoever turns Debug on: the token call's status.
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.StartsWith("Debug", StringComparison.Ordinal) && l.Contains("[2217]", StringComparison.Ordinal)
            && l.Contains("HTTP 503", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PortTokenEndpointDown_TheSendsThatMakeNoCall_WaitLongerEachTime()
    {
        // A try that finds the 5 s pause after a failed token call makes no call, but it is a try (a touch of the report, a
        // span). While the token endpoint stays down those tries back off as an outage's do: at one every 5-6 s, twelve
        // reports made 517-537 tries in 10 min (most of them not_tried, each finding the pause of another's failed call);
        // with the waits growing to 2 min, about ten each.
        using var spans = new ReportSpans();
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var (runIds, clock) = await ReportsQueuedAsync(relay, new { failNext = 100_000, status = 503 }, count: 12);
        var start = clock.GetUtcNow();

        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(clock.GetUtcNow() - start >= TimeSpan.FromMinutes(10)),
            TimeSpan.FromSeconds(120), "ten minutes on the fake clock");

        var ours = spans.OfRuns(runIds).Select(a => (RunId: (string)a.GetTagItem("portazure.run_id")!, Outcome: (string)a.GetTagItem("portazure.outcome")!,
            Error: a.Status == ActivityStatusCode.Error)).ToList();
        Assert.Contains(ours, t => t.Outcome == "not_tried");
        Assert.True(ours.Count <= 12 * 12, $"{ours.Count} tries of 12 reports in 10 min: {ours.Count(t => t.Outcome == "not_tried")} not_tried");
        Assert.All(runIds, r => Assert.True(ours.Count(t => t.RunId == r) >= 4, $"{r} still tried while it waits"));
        // A try that made no call did not fail.
        Assert.All(ours, t => Assert.Equal(t.Outcome != "not_tried", t.Error));
        Assert.Equal(12, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines, l => l.Contains("[2202]", StringComparison.Ordinal));

        await PortAcceptsAgainThenEverySentAsync(relay, clock, runIds, "every report is sent once the token endpoint is back");
    }

    [Fact]
    public async Task PortApiDown_PastTheRetryAge_TheReportIsGivenUp()
    {
        // Waiting out an outage is bounded by the retry age (6 min here), as a delivery's wait for Azure is.
        await using var relay = await StartWithASixMinuteRetryAgeAsync();
        using var spans = new ReportSpans();
        var (clock, deliveryId) = await ReportQueuedWhilePortIsDownAsync(relay);

        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2202]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(120), "the report given up");
        // Given up before a call or after one, as the waits fall: either way the trace's last report span says why.
        Assert.Equal("past_retry_age", spans.Of(deliveryId)[^1].GetTagItem("portazure.reason"));

        var calls = await relay.EmulatorApi.PortCallsAsync();
        // (8 attempts would be spent by 4 min; the age is 6 min.)
        Assert.True(calls.Count >= 8, $"{calls.Count} calls: given up on the age, not after its 8 attempts");
        Assert.True(clock.GetUtcNow() - calls[0].ReceivedAt >= TimeSpan.FromMinutes(6) - TimeSpan.FromMinutes(1), "not before the retry age");
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0, TimeSpan.FromSeconds(10), "the report leaves the stream");
    }

    [Fact]
    public async Task PortApiBackJustPastTheRetryAge_TheReportIsGivenUpWithoutAnotherCall()
    {
        // The age was checked only after a failed call: the wait that crossed it (2 min by then) ended in one more call,
        // which sent the report past its age.
        await using var relay = await StartWithASixMinuteRetryAgeAsync();
        using var spans = new ReportSpans();
        var (clock, deliveryId) = await ReportQueuedWhilePortIsDownAsync(relay);
        var writtenAt = clock.GetUtcNow();

        // To the age exactly (not past it): every call due until then is made, while Port is down.
        var age = TimeSpan.FromMinutes(6);
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(clock.GetUtcNow() - writtenAt >= age - TimeSpan.FromSeconds(5)),
            TimeSpan.FromSeconds(60), "the report's retry age comes near");
        clock.SetUtcNow(writtenAt + age);
        // Every call due until then made, and in the emulator's records: the count holds still for a second.
        var callsUntilTheAge = -1;
        for (var count = (await relay.EmulatorApi.PortCallsAsync()).Count; count != callsUntilTheAge; count = (await relay.EmulatorApi.PortCallsAsync()).Count)
        {
            callsUntilTheAge = count;
            await Task.Delay(1000);
        }

        await relay.EmulatorApi.PortBehaviorAsync(new { down = false });
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), () => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2202]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(60), "the report given up");

        Assert.Equal(callsUntilTheAge, (await relay.EmulatorApi.PortCallsAsync()).Count);
        // No call, but a span: the run's trace ends with its report given up.
        var givenUp = spans.AssertLastSaysGivenUp(deliveryId, "given_up", "past_retry_age");
        Assert.Null(givenUp.GetTagItem("portazure.attempt"));

        // (The record, not the API: no Dispatcher was behind the Ingress when it started.)
        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.PortReport) == "failed",
            TimeSpan.FromSeconds(20), "the report recorded as failed, not sent");
    }

    [Fact]
    public async Task PortFailsOneRunOnly_WhileTakingOthers_ThatReportSpendsItsAttemptsAndIsGivenUp()
    {
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        var poison = TestRuns.NewRunId();
        await relay.EmulatorApi.PortBehaviorAsync(new { failRun = poison, status = 500 });
        using var spans = new ReportSpans();
        var poisonDelivery = await SendAsync(relay, poison);

        // Port takes the other runs' reports all along: a new run at every step.
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () =>
        {
            await SendAsync(relay, TestRuns.NewRunId());
            return relay.Dispatcher.Logs.Lines.Any(l => l.Contains("[2202]", StringComparison.Ordinal));
        }, TimeSpan.FromSeconds(180), "the failing run's report given up");

        var calls = await relay.EmulatorApi.PortCallsAsync();
        // Its 8 attempts, and a try or two not counted while no other report had been sent since its previous one.
        Assert.InRange(calls.Count(c => c.RunId == poison), 8, 10);
        Assert.Contains(calls, c => c.RunId != poison && c.StatusCode == 201);
        spans.AssertLastSaysGivenUp(poisonDelivery, "retry_later", "attempts_spent");
    }

    /// <summary>
    /// Port set to <paramref name="portBehavior"/>, <paramref name="count"/> runs queued, then a Dispatcher on a fake clock that delivers
    /// them: their reports wait in the stream for its reporter.
    /// </summary>
    private static async Task<(string[] RunIds, FakeTimeProvider Clock)> ReportsQueuedAsync(Relay relay, object portBehavior, int count = 3)
    {
        await relay.EmulatorApi.PortBehaviorAsync(portBehavior);
        var runIds = Enumerable.Range(0, count).Select(_ => TestRuns.NewRunId()).ToArray();
        foreach (var runId in runIds)
        {
            await SendAsync(relay, runId);
        }
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == count,
            TimeSpan.FromSeconds(30), $"the {count} runs delivered and their reports queued");
        return (runIds, clock);
    }

    /// <summary>Port stops failing its calls; the clock moves in 5 s steps until a report for every run id has been sent.</summary>
    private static async Task PortAcceptsAgainThenEverySentAsync(Relay relay, FakeTimeProvider clock, IReadOnlyCollection<string> runIds, string what)
    {
        await relay.EmulatorApi.PortBehaviorAsync(new { failNext = 0 });
        await StepUntilAsync(clock, TimeSpan.FromSeconds(5), async () =>
        {
            var sent = (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.StatusCode == 201).Select(c => c.RunId).ToHashSet();
            return runIds.All(sent.Contains);
        }, TimeSpan.FromSeconds(30), what);
    }

    /// <summary>Moves the fake clock a step at a time until <paramref name="condition"/> holds.</summary>
    private static Task StepUntilAsync(FakeTimeProvider clock, TimeSpan step, Func<Task<bool>> condition, TimeSpan timeout, string what) =>
        Eventually.HoldsAsync(async () =>
        {
            clock.Advance(step);
            return await condition();
        }, timeout, what);

    /// <summary>A relay with reporting on, a retry age of 6 min and no Dispatcher yet.</summary>
    private static Task<Relay> StartWithASixMinuteRetryAgeAsync() => Relay.StartAsync(c =>
    {
        c["Port:ClientId"] = "relay-client";
        c["Dispatcher:Retry:MaxAgeHours"] = "0.1";
    }, dispatchers: 0);

    /// <summary>A Dispatcher on a fake clock, Port down, and one run delivered whose report is queued (the clock not moved since).</summary>
    private static async Task<(FakeTimeProvider Clock, string DeliveryId)> ReportQueuedWhilePortIsDownAsync(Relay relay)
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await relay.AddDispatcherAsync(services: s => s.AddSingleton<TimeProvider>(clock));
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var deliveryId = await SendAsync(relay, TestRuns.NewRunId());
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 1,
            TimeSpan.FromSeconds(30), $"delivery {deliveryId} delivered and its report queued");
        return (clock, deliveryId);
    }

    /// <summary>
    /// A Dispatcher on a fake clock, Port down, and one delivered run whose report has had its first, failing call:
    /// the reporter now waits on the stopped clock.
    /// </summary>
    private static async Task<FakeTimeProvider> FirstReportCallFailedAsync(Relay relay)
    {
        var (clock, _) = await ReportQueuedWhilePortIsDownAsync(relay);
        // The reporter polls on the fake clock: small steps (well short of the 1 s back-off) until its first call fails.
        await StepUntilAsync(clock, TimeSpan.FromMilliseconds(100), async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0,
            TimeSpan.FromSeconds(20), "a first, failing call to Port");
        return clock;
    }

    /// <summary>Port's API down, a run delivered and its report's first call failed.</summary>
    /// <returns>The delivery id.</returns>
    private static async Task<string> DeliveredWhilePortIsDownAsync(Relay relay, string runId)
    {
        await relay.EmulatorApi.PortBehaviorAsync(new { down = true });
        var deliveryId = await SendAsync(relay, runId);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Count > 0, TimeSpan.FromSeconds(10), "a first, failing call to Port");
        return deliveryId;
    }

    /// <summary>The delivery view's <c>portReport</c>.</summary>
    private static async Task<JsonElement> PortReportViewAsync(Relay relay, string deliveryId)
    {
        var view = (await DeliveryAsync(relay, deliveryId)).GetProperty("portReport");
        Assert.Equal(JsonValueKind.Object, view.ValueKind);
        return view;
    }

    /// <summary>The reporter logs a report's end before it writes it to the record.</summary>
    private static Task WaitForPortReportAsync(Relay relay, string deliveryId, string state) =>
        Eventually.HoldsAsync(async () => (await DeliveryAsync(relay, deliveryId)).GetProperty("portReport") is { ValueKind: JsonValueKind.Object } view
            && view.GetProperty("state").GetString() == state && view.GetProperty("at").ValueKind == JsonValueKind.String,
            TimeSpan.FromSeconds(20), $"the delivery's report shown {state}");

    private static async Task<string> HealthAsync(Relay relay)
    {
        using var response = await relay.Dispatcher.Client.GetAsync(new Uri("/health", UriKind.Relative));
        return await response.Content.ReadAsStringAsync();
    }

    private static async Task<long> ReportIdleMillisecondsAsync(Relay relay) => (await PendingReportAsync(relay)).IdleTimeInMilliseconds;

    /// <summary>The one report pending in the reporters' group.</summary>
    private static async Task<StreamPendingMessageInfo> PendingReportAsync(Relay relay) =>
        Assert.Single(await relay.Db.StreamPendingMessagesAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, 10, RedisValue.Null));

    /// <summary>Another reporter takes the one pending report over, as it would after the reclaim time.</summary>
    private static async Task TakeOverReportAsync(Relay relay, string consumer) =>
        Assert.Single(await relay.Db.StreamClaimAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, consumer, 0, [(await PendingReportAsync(relay)).MessageId]));

    [Fact]
    public async Task ReportStreamFull_AReportKeepsItNearItsCap()
    {
        // While Port is unreachable reports pile up; the stream keeps about the newest RedisKeys.PortReportsMaxLength
        // (trimmed in whole nodes, so a little over), not every one since the outage began. No reporter runs here: only
        // the delivery's own step writes to the stream.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client", dispatchers: 0);
        const int over = 1_000;
        for (var start = 0; start < RedisKeys.PortReportsMaxLength + over; start += 5_000)
        {
            var batch = relay.Db.CreateBatch();
            var adds = Enumerable.Range(start, 5_000).Select(i => batch.StreamAddAsync(RedisKeys.PortReports, "filler", i)).ToList();
            batch.Execute();
            await Task.WhenAll(adds);
        }
        await relay.AddDispatcherAsync(services: s => s.RemoveHostedService<PortAzure.Dispatcher.PortReporting.PortReportingService>());

        var deliveryId = await SendAsync(relay);
        // Read from Redis: the Ingress knows no Dispatcher address for the operator API in this set-up.
        await Eventually.HoldsAsync(async () => await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) == DeliveryStates.Delivered,
            TimeSpan.FromSeconds(30), "the run is delivered");

        var length = await relay.Db.StreamLengthAsync(RedisKeys.PortReports);
        Assert.InRange(length, RedisKeys.PortReportsMaxLength, RedisKeys.PortReportsMaxLength + over / 2);
        var newest = Assert.Single(await relay.Db.StreamRangeAsync(RedisKeys.PortReports, "-", "+", 1, Order.Descending));
        Assert.DoesNotContain(newest.Values, v => v.Name == "filler");
    }

    [Fact]
    public async Task RunWithoutRunId_IsNotReported()
    {
        await using var relay = await StartAsync();
        using var response = await relay.SendRunAsync(Encoding.UTF8.GetBytes($$"""{"action":"x","nonce":"{{Guid.NewGuid():N}}"}"""));
        var deliveryId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;

        // The step that records the outcome writes the report, if any: nothing to wait for after it.
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Empty(await relay.EmulatorApi.PortCallsAsync());
        Assert.Equal(JsonValueKind.Null, (await DeliveryAsync(relay, deliveryId)).GetProperty("portReport").ValueKind);
        // Nor is a run id sent to Azure: the POST names the delivery only.
        var posted = Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(deliveryId, posted.Header("Idempotency-Key"));
        Assert.Null(posted.Header("X-Port-Run-Id"));
    }

    [Fact]
    public async Task NoClientId_NothingIsReported()
    {
        await using var relay = await Relay.StartAsync();
        var deliveryId = await SendAsync(relay);

        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.PortReports));
        Assert.Empty(await relay.EmulatorApi.PortCallsAsync());
        Assert.Equal(JsonValueKind.Null, (await DeliveryAsync(relay, deliveryId)).GetProperty("portReport").ValueKind);
    }

    /// <summary>The Dispatcher's "report to Port" spans, as they end.</summary>
    private sealed class ReportSpans : IDisposable
    {
        private readonly ConcurrentQueue<Activity> _ended = new();
        private readonly ActivityListener _listener;

        public ReportSpans()
        {
            _listener = new ActivityListener
            {
                ShouldListenTo = source => source.Name == PortAzureDiagnostics.Name,
                Sample = (ref ActivityCreationOptions<ActivityContext> _) =>
                    ActivitySamplingResult.AllDataAndRecorded,
                ActivityStopped = a =>
                {
                    if (a.DisplayName == "report to Port")
                    {
                        _ended.Enqueue(a);
                    }
                },
            };
            ActivitySource.AddActivityListener(_listener);
        }

        /// <summary>The report spans of one delivery (every listener sees every test's spans), in the order they ended.</summary>
        public List<Activity> Of(string deliveryId) =>
            [.. _ended.Where(a => deliveryId.Equals(a.GetTagItem("portazure.delivery_id")))];

        /// <summary>The report spans of these runs, in the order they ended.</summary>
        public List<Activity> OfRuns(IReadOnlyCollection<string> runIds) =>
            [.. _ended.Where(a => a.GetTagItem("portazure.run_id") is string runId && runIds.Contains(runId))];

        /// <summary>The delivery's last report span: an error, with <paramref name="outcome"/> and the reason it was the last.</summary>
        public Activity AssertLastSaysGivenUp(string deliveryId, string outcome, string reason)
        {
            var ended = Of(deliveryId);
            Assert.NotEmpty(ended);
            var last = ended[^1];
            Assert.Equal(outcome, last.GetTagItem("portazure.outcome"));
            Assert.Equal(reason, last.GetTagItem("portazure.reason"));
            Assert.Equal(ActivityStatusCode.Error, last.Status);
            // Only the last says it: the tries before it were retried.
            Assert.All(ended.SkipLast(1), a => Assert.Null(a.GetTagItem("portazure.reason")));
            return last;
        }

        public void Dispose() => _listener.Dispose();
    }
}
