using System.Net;
using System.Net.Http.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using PortAzure.Diagnostics;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Diagnostics;

public class MetricsTests
{
    [Fact]
    public async Task Ingress_KnownSequence_CountsAcceptedDuplicateAndRejectedByReason()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        using var requests = new MetricCollector<long>(relay.Ingress.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(),
            PortAzureDiagnostics.Name, "portazure.ingress.requests");
        var body = TestRuns.Body(TestRuns.NewRunId());

        (await relay.SendRunAsync(body)).Dispose();
        (await relay.SendRunAsync(body)).Dispose();
        (await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()))).Dispose();
        using (var wrong = TestRuns.Signed(body, secret: "wrong"))
        {
            (await relay.Ingress.Client.SendAsync(wrong)).Dispose();
        }
        (await relay.SendRunAsync(body, org: "bad_org")).Dispose();

        var measurements = requests.GetMeasurementSnapshot();
        long Count(string outcome, string? reason = null) => measurements
            .Where(m => (string?)m.Tags["outcome"] == outcome && (reason is null || (string?)m.Tags["reason"] == reason))
            .Sum(m => m.Value);
        Assert.Equal(2, Count("accepted"));
        Assert.Equal(1, Count("duplicate"));
        Assert.Equal(1, Count("rejected", "signature_invalid"));
        Assert.Equal(1, Count("rejected", "invalid_org"));
    }

    [Fact]
    public async Task Dispatcher_RetryThenDelivery_CountsAttemptsByOutcomeAndRecordsLatency()
    {
        await using var relay = await Relay.StartAsync();
        var meters = relay.Dispatcher.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        using var attempts = new MetricCollector<long>(meters, PortAzureDiagnostics.Name, "portazure.dispatch.attempts");
        using var latency = new MetricCollector<double>(meters, PortAzureDiagnostics.Name, "portazure.delivery.latency");
        using var deadLetters = new MetricCollector<long>(meters, PortAzureDiagnostics.Name, "portazure.dispatch.deadletters");
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 }, new { status = 200 }, new { status = 404 } } });

        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(() => Task.FromResult(latency.GetMeasurementSnapshot().Count == 1), TimeSpan.FromSeconds(20), "one delivery");
        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(() => Task.FromResult(deadLetters.GetMeasurementSnapshot().Count == 1), TimeSpan.FromSeconds(20), "one dead letter");

        var snapshot = attempts.GetMeasurementSnapshot();
        Assert.Equal(1, snapshot.Count(m => (string?)m.Tags["outcome"] == "transient" && (string?)m.Tags["status_class"] == "5xx"));
        Assert.Equal(1, snapshot.Count(m => (string?)m.Tags["outcome"] == "delivered" && (string?)m.Tags["status_class"] == "2xx"));
        Assert.Equal(1, snapshot.Count(m => (string?)m.Tags["outcome"] == "permanent" && (string?)m.Tags["status_class"] == "4xx"));
        // In seconds: the run waited out a retry (0.1 s less 20 % jitter at least), which in milliseconds would read 80 or more.
        Assert.InRange(latency.GetMeasurementSnapshot()[0].Value, 0.08, 20);
        Assert.Equal("permanent_failure", deadLetters.GetMeasurementSnapshot()[0].Tags["reason"]);
    }

    [Fact]
    public async Task Dispatcher_OldestQueuedRunPastThreshold_ReportsDegraded()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:BacklogDegradedSeconds"] = "1";
            c["Dispatcher:MaxConcurrency"] = "1";
        });
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 15000 });
        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);
        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () =>
        {
            using var response = await relay.Dispatcher.Client.GetAsync("/health");
            return response.StatusCode == HttpStatusCode.OK && await response.Content.ReadAsStringAsync() == "Degraded";
        }, TimeSpan.FromSeconds(15), "/health reports Degraded");
        using var alive = await relay.Dispatcher.Client.GetAsync("/alive");
        Assert.Equal("Healthy", await alive.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Dispatcher_RetryScheduleOfAnotherType_HealthDegradedNamingItAndTheOtherCountsStillRead()
    {
        // A damaged schedule stops every read of the delivery loop. It also failed the whole backlog reading, so /health went
        // on from the last one (Healthy) with nothing delivered, and /api/stats answered 500.
        await using var relay = await Relay.StartAsync();
        await relay.Db.StringSetAsync(PortAzure.Redis.RedisKeys.RetrySchedule, "damaged");
        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);

        var snapshot = await relay.Dispatcher.Services.GetRequiredService<PortAzure.Dispatcher.Diagnostics.BacklogMonitor>().ReadAsync();
        var health = await relay.Dispatcher.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync(c => c.Name == "backlog");
        using var request = relay.Operator(HttpMethod.Get, "/api/stats");
        using var response = await relay.Dispatcher.Client.SendAsync(request);

        Assert.Equal([PortAzure.Redis.RedisKeys.RetrySchedule], snapshot.DamagedKeys);
        Assert.Equal(1, snapshot.StreamLength);
        var backlog = health.Entries["backlog"];
        Assert.Equal(HealthStatus.Degraded, backlog.Status);
        Assert.Contains(PortAzure.Redis.RedisKeys.RetrySchedule, backlog.Description, StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var stats = await response.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>();
        Assert.Equal(1, stats.GetProperty("streamLength").GetInt64());
        Assert.Equal([PortAzure.Redis.RedisKeys.RetrySchedule], stats.GetProperty("damagedKeys").EnumerateArray().Select(k => k.GetString()));
        await Eventually.HoldsAsync(async () =>
        {
            using var polled = await relay.Dispatcher.Client.GetAsync("/health");
            return await polled.Content.ReadAsStringAsync() == "Degraded";
        }, TimeSpan.FromSeconds(15), "/health reports Degraded");
    }

    [Fact]
    public async Task Dispatcher_PortReportsGauge_CountsTheReportsWaiting()
    {
        // The report stream keeps the newest 100,000: in a long Port outage the oldest are lost without a line, unless its
        // length is watched (only redis-cli showed it).
        await using var relay = await Relay.StartAsync();
        var meters = relay.Dispatcher.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        using var reports = new MetricCollector<long>(meters, PortAzureDiagnostics.Name, "portazure.backlog.port_reports");
        for (var i = 0; i < 3; i++)
        {
            await relay.Db.StreamAddAsync(PortAzure.Redis.RedisKeys.PortReports, [new StackExchange.Redis.NameValueEntry("r", i)]);
        }

        await relay.Dispatcher.Services.GetRequiredService<PortAzure.Dispatcher.Diagnostics.BacklogMonitor>().ReadAsync();
        reports.RecordObservableInstruments();

        Assert.Equal(3, reports.LastMeasurement?.Value);
    }

    [Fact]
    public async Task Dispatcher_BacklogGauges_ReportDeadLettersAndPausedTargets()
    {
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:TargetHealth:FailureThreshold"] = "1");
        var meters = relay.Dispatcher.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        using var deadLetters = new MetricCollector<long>(meters, PortAzureDiagnostics.Name, "portazure.backlog.deadletters");
        using var paused = new MetricCollector<long>(meters, PortAzureDiagnostics.Name, "portazure.backlog.paused_targets");
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 }, new { status = 503 } } });

        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);
        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 2, TimeSpan.FromSeconds(45), "both attempted");
        await Eventually.HoldsAsync(async () =>
        {
            await relay.Dispatcher.Services.GetRequiredService<PortAzure.Dispatcher.Diagnostics.BacklogMonitor>().ReadAsync();
            deadLetters.RecordObservableInstruments();
            paused.RecordObservableInstruments();
            return deadLetters.LastMeasurement?.Value == 1 && paused.LastMeasurement?.Value == 1;
        }, TimeSpan.FromSeconds(20), "the gauges show one dead letter and one paused target");
    }

    [Fact]
    public async Task Dispatcher_PortReports_CountsSentAndFailedByOutcome()
    {
        // outcome=failed is what the go-live checklist alerts on: a report Port refused is counted as failed, once.
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client");
        using var reports = new MetricCollector<long>(relay.Dispatcher.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(),
            PortAzureDiagnostics.Name, "portazure.port.reports");
        var refused = "r_refused" + Guid.NewGuid().ToString("N")[..8];
        await relay.EmulatorApi.PortBehaviorAsync(new { failRun = refused, status = 400 });

        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay, TestRuns.NewRunId());
        await Dispatcher.DeliveryOutcomeTests.SendAsync(relay, refused);
        await Eventually.HoldsAsync(() => Task.FromResult(reports.GetMeasurementSnapshot().Sum(m => m.Value) >= 2), TimeSpan.FromSeconds(20),
            "both reports counted");
        await Task.Delay(500);

        var snapshot = reports.GetMeasurementSnapshot();
        Assert.Equal(1, snapshot.Where(m => (string?)m.Tags["outcome"] == "sent").Sum(m => m.Value));
        Assert.Equal(1, snapshot.Where(m => (string?)m.Tags["outcome"] == "failed").Sum(m => m.Value));
        Assert.Equal(2, snapshot.Sum(m => m.Value));
    }
}
