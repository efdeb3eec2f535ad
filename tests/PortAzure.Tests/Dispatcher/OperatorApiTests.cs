using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The operator API's own answers (the edge's key check: Ingress/OperatorApiGuardTests).</summary>
public class OperatorApiTests
{
    [Theory]
    [InlineData("/api/deliveries?runId=r_damaged")]
    [InlineData("/api/deadletters")]
    public async Task Get_AKeyItReadsOfAnotherType_Answers500KeyDamagedAndLogsIt(string path)
    {
        // The default handler's bare internal_error read like a bug in the relay, and named nothing.
        await using var relay = await Relay.StartAsync();
        await relay.Db.StringSetAsync(path.Contains("runId", StringComparison.Ordinal) ? RedisKeys.RunIndex("r_damaged") : RedisKeys.DeadLetters, "damaged");

        using var request = relay.Operator(HttpMethod.Get, path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        Assert.Equal("redis_key_damaged", await ProblemResponses.ReasonAsync(response));
        Assert.Contains(relay.Dispatcher.Logs.Lines, l => l.Contains("[2305]", StringComparison.Ordinal) && l.StartsWith("Error", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ReplayAll_StreamOfAnotherType_Answers500KeyDamagedAndTheDeadLetterStays()
    {
        // Counted as an outage, it answered 200 "incomplete", its dead letter "in doubt", for a replay that never ran.
        await using var relay = await Relay.StartAsync();
        var id = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, id, 1, TestRuns.Body(TestRuns.NewRunId()),
            new HashEntry(DeliveryRecord.ReceivedAt, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
        await relay.Db.KeyDeleteAsync(RedisKeys.Stream);
        await relay.Db.StringSetAsync(RedisKeys.Stream, "damaged");

        using var request = relay.Operator(HttpMethod.Post, "/api/deadletters/replay");
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        Assert.Equal("redis_key_damaged", await ProblemResponses.ReasonAsync(response));
        Assert.Equal(DeliveryStates.DeadLettered, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State));
        Assert.NotNull(await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
    }

    [Fact]
    public async Task FindByRun_TwoWebhooksGotTheRun_ListsBothDeliveries()
    {
        await using var relay = await Relay.StartAsync();
        var runId = TestRuns.NewRunId();
        var first = await SendAsync(relay, runId);
        // Signed anew (another timestamp), as Port would: the same signed call twice is a replay.
        using var call = TestRuns.Signed(TestRuns.Body(runId), webhook: "other", at: DateTimeOffset.UtcNow.AddSeconds(-2));
        using var accepted = await relay.Ingress.Client.SendAsync(call);
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        var second = (await accepted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;
        await SendAsync(relay);

        using var request = relay.Operator(HttpMethod.Get, $"/api/deliveries?runId={runId}");
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var items = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("items").EnumerateArray().ToList();
        Assert.Equal(new[] { first, second }.Order(StringComparer.Ordinal), items.Select(i => i.GetProperty("deliveryId").GetString()!));
        Assert.All(items, i => Assert.Equal(runId, i.GetProperty("runId").GetString()));
    }

    [Fact]
    public async Task Stats_KnownBacklog_ReportsEachCountInItsOwnField()
    {
        // A Dispatcher that delivers nothing (no delivery worker), over a backlog of different sizes per field, so that
        // a field read from the wrong key, or swapped with another, shows.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var db = relay.Db;
        var oldest = DateTimeOffset.UtcNow.AddMinutes(-2).ToUnixTimeMilliseconds();
        for (var i = 0; i < 3; i++)
        {
            await db.StreamAddAsync(RedisKeys.Stream, [new NameValueEntry("d", i)], $"{oldest + i}-0");
        }
        await db.StreamCreateConsumerGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "0-0");
        await db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "crashed-replica", ">", count: 1);
        await db.SortedSetAddAsync(RedisKeys.RetrySchedule, [new SortedSetEntry("d_r1", 1), new SortedSetEntry("d_r2", 2)]);
        await db.SortedSetAddAsync(RedisKeys.DeadLetters, Enumerable.Range(0, 4).Select(i => new SortedSetEntry($"d_x{i}", i)).ToArray());
        for (var i = 0; i < 6; i++)
        {
            await db.StreamAddAsync(RedisKeys.PortReports, [new NameValueEntry("r", i)]);
        }
        // Three pauses in effect (probes ahead); one whose probe failed 5 min ago (its delivery waits out a backoff of up to
        // Retry:MaxDelaySeconds, 10 min, before it probes again); one whose probe time is damaged (the next begin repairs
        // it). The sixth's probe was due an hour ago and nobody took it: nothing waits behind it, and it is not counted.
        var probeAt = DateTimeOffset.UtcNow.AddSeconds(30).ToUnixTimeMilliseconds();
        await db.HashSetAsync(RedisKeys.PausedTargets, Enumerable.Range(0, 3).Select(i => new HashEntry($"org{i}/hook", probeAt + i))
            .Append(new HashEntry("org3/hook", DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds()))
            .Append(new HashEntry("org4/hook", "not-a-time"))
            .Append(new HashEntry("org5/hook", DateTimeOffset.UtcNow.AddHours(-1).ToUnixTimeMilliseconds())).ToArray());
        // The defaults the pauses above are judged by (the tests' own are seconds).
        await relay.AddDispatcherAsync(c =>
        {
            c["Dispatcher:Retry:MaxDelaySeconds"] = "600";
            c["Dispatcher:TargetHealth:ProbeIntervalSeconds"] = "30";
        }, services: s => s.RemoveHostedService<PortAzure.Dispatcher.Delivery.DeliveryWorker>());

        // To the Dispatcher itself: with no Dispatcher at its start, the Ingress knows no address to proxy to.
        using var request = relay.Operator(HttpMethod.Get, "/api/stats");
        using var response = await relay.Dispatcher.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var stats = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(3, stats.GetProperty("streamLength").GetInt64());
        Assert.Equal(1, stats.GetProperty("pending").GetInt64());
        Assert.Equal(2, stats.GetProperty("scheduledRetries").GetInt64());
        Assert.Equal(4, stats.GetProperty("deadLetters").GetInt64());
        Assert.Equal(5, stats.GetProperty("pausedTargets").GetInt64());
        Assert.Equal(6, stats.GetProperty("portReports").GetInt64());
        Assert.Empty(stats.GetProperty("damagedKeys").EnumerateArray());
        // From the oldest entry's id (two minutes ago), in seconds; no upper wall-clock bound beyond a generous one.
        Assert.InRange(stats.GetProperty("oldestAgeSeconds").GetDouble(), 119, 600);
    }

    [Fact]
    public async Task ById_PortReport_PendingOnlyWhileTheReportTheRecordNamesIsInTheStream()
    {
        // Records as the finish and the reporters leave them, read by a Dispatcher that sends no report and delivers nothing.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var db = relay.Db;
        var queued = (string)(await db.StreamAddAsync(RedisKeys.PortReports, [new NameValueEntry("r", 1)]))!;
        var writtenAt = DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds();
        var cases = new (string? Entry, string? Ended, string? Expected)[]
        {
            (queued, null, "pending"),
            // Gone from the stream and never ended: trimmed before a reporter sent it, or reaped by a takeover.
            ("1-0", null, "trimmed"),
            ("not-an-entry-id", null, "trimmed"),
            // Past the largest id Redis takes: not looked up (Redis would answer an error).
            ("99999999999999999999-0", null, "trimmed"),
            // Gone, and ended by a reporter that left the entry named (one of an earlier version).
            ("1-0", "sent", "sent"),
            (null, "failed", "failed"),
            (null, null, null),
        };
        var ids = new List<string>();
        foreach (var (entry, ended, _) in cases)
        {
            var id = "d_" + Guid.NewGuid().ToString("N");
            ids.Add(id);
            var fields = new List<HashEntry> { new(DeliveryRecord.State, DeliveryStates.Delivered), new(DeliveryRecord.PortReportAt, writtenAt) };
            if (entry is not null)
            {
                fields.Add(new(DeliveryRecord.PortReportEntry, entry));
            }
            if (ended is not null)
            {
                fields.Add(new(DeliveryRecord.PortReport, ended));
            }
            await db.HashSetAsync(RedisKeys.Delivery(id), [.. fields]);
        }
        await relay.AddDispatcherAsync(services: s =>
        {
            s.RemoveHostedService<PortAzure.Dispatcher.Delivery.DeliveryWorker>();
            s.RemoveHostedService<PortAzure.Dispatcher.PortReporting.PortReportingService>();
        });

        for (var i = 0; i < cases.Length; i++)
        {
            // To the Dispatcher itself: with no Dispatcher at its start, the Ingress knows no address to proxy to.
            using var request = relay.Operator(HttpMethod.Get, $"/api/deliveries/{ids[i]}");
            using var response = await relay.Dispatcher.Client.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var report = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("portReport");
            if (cases[i].Expected is null)
            {
                Assert.Equal(JsonValueKind.Null, report.ValueKind);
                continue;
            }
            Assert.Equal(cases[i].Expected, report.GetProperty("state").GetString());
            Assert.Equal(writtenAt, report.GetProperty("at").GetDateTimeOffset().ToUnixTimeMilliseconds());
        }
        // Read, not changed: the report still named, and still in the stream.
        Assert.Equal("1-0", (string?)await db.HashGetAsync(RedisKeys.Delivery(ids[1]), DeliveryRecord.PortReportEntry));
        Assert.Equal(1, await db.StreamLengthAsync(RedisKeys.PortReports));
    }

    [Theory]
    [InlineData("GET", "/api/deliveries/d_0123")]
    [InlineData("GET", "/api/deliveries/x_0123456789abcdef0123456789abcdef")]
    [InlineData("GET", "/api/deliveries/d_0123456789ABCDEF0123456789ABCDEF")]
    [InlineData("GET", "/api/deliveries/d_0123456789abcdef0123456789abcdef%0A")]
    [InlineData("POST", "/api/deadletters/d_0123456789abcdef0123456789abcdef%0A/replay")]
    [InlineData("DELETE", "/api/deadletters/d_0123456789abcdef0123456789abcdef%0A")]
    public async Task ById_NotADeliveryId_Is400DeliveryIdInvalid(string method, string path)
    {
        await using var relay = await Relay.StartAsync();

        using var request = relay.Operator(new HttpMethod(method), path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("delivery_id_invalid", await ProblemResponses.ReasonAsync(response));
    }

    [Theory]
    [InlineData("/api/deliveries?runId=", "run_id_required")]
    [InlineData("/api/deliveries", "run_id_required")]
    [InlineData("/api/deliveries?runId={long}", "run_id_invalid")]
    // Bound as one string, the two were joined and looked up as the run id "a,b" (a legal one): "nothing found", not an error.
    [InlineData("/api/deliveries?runId=a&runId=b", "run_id_invalid")]
    public async Task FindByRun_NoOrTooLongOrRepeatedRunId_Is400WithItsReason(string path, string reason)
    {
        await using var relay = await Relay.StartAsync();
        using var request = relay.Operator(HttpMethod.Get, path.Replace("{long}", new string('r', 1025), StringComparison.Ordinal));
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(reason, await ProblemResponses.ReasonAsync(response));
    }

    [Theory]
    [InlineData("GET", "/api/deadletters?cursor=0_a&cursor=1_b", "cursor_invalid")]
    [InlineData("GET", "/api/deadletters?limit=1&limit=2", "limit_invalid")]
    [InlineData("POST", "/api/deadletters/replay?limit=1&limit=1", "limit_invalid")]
    public async Task Call_ParameterGivenTwice_Is400NamingIt(string method, string path, string reason)
    {
        // Joined with a comma, a repeated cursor was read as one naming no dead letter: the first page, again and again.
        await using var relay = await Relay.StartAsync();
        using var request = relay.Operator(new HttpMethod(method), path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(reason, await ProblemResponses.ReasonAsync(response));
        Assert.Contains("appears more than once", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("POST", "/api/deadletters/d_00000000000000000000000000000000/replay", 404, "deadletter_not_found")]
    [InlineData("DELETE", "/api/deadletters/d_00000000000000000000000000000000", 404, "deadletter_not_found")]
    [InlineData("GET", "/api/nothing-here", 404, "not_found")]
    [InlineData("GET", "/api/deadletters/replay", 405, "method_not_allowed")]
    public async Task Call_NothingThere_IsAProblemWithAReason(string method, string path, int status, string reason)
    {
        // Also the answers the framework writes itself (no route, wrong method) carry a reason to branch on.
        await using var relay = await Relay.StartAsync();
        using var request = relay.Operator(new HttpMethod(method), path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(status, (int)response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal(reason, await ProblemResponses.ReasonAsync(response));
    }

    [Fact]
    public async Task Delete_DeliveredRun_Is409WithItsStateAndChangesNothing()
    {
        await using var relay = await Relay.StartAsync();
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        using var delete = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{deliveryId}");
        using var response = await relay.Ingress.Client.SendAsync(delete);

        Assert.Equal(HttpStatusCode.Conflict, response.StatusCode);
        Assert.Equal("not_a_deadletter", await ProblemResponses.ReasonAsync(response));
        Assert.Equal(DeliveryStates.Delivered, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
    }
}
