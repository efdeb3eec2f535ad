using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Net.Http.Json;
using System.Text;
using PortAzure.Diagnostics;
using PortAzure.Ingress.Webhooks;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Diagnostics;

/// <summary>One trace from Port's call to the Azure POST, across Redis, with the attributes operators filter on.</summary>
public sealed class TracingTests : IDisposable
{
    private readonly ConcurrentQueue<Activity> _stopped = new();
    private readonly ActivityListener _listener;

    public TracingTests()
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name is PortAzureDiagnostics.Name or "Microsoft.AspNetCore" or "System.Net.Http",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = _stopped.Enqueue,
        };
        ActivitySource.AddActivityListener(_listener);
    }

    public void Dispose() => _listener.Dispose();

    private static (string TraceParent, string TraceId) NewTraceParent()
    {
        var traceId = ActivityTraceId.CreateRandom().ToHexString();
        return ($"00-{traceId}-{ActivitySpanId.CreateRandom().ToHexString()}-01", traceId);
    }

    private static Task<HttpResponseMessage> SendTracedAsync(Relay relay, byte[] body, string traceParent, string? traceState = null) =>
        SendTracedAsync(relay, TestRuns.Signed(body), traceParent, traceState);

    /// <summary>
    /// Sends as Port would, with its own traceparent, over a plain socket: an HttpClient in this process
    /// would be instrumented by the hosts' tracer providers and replace the header with its own span.
    /// </summary>
    private static async Task<HttpResponseMessage> SendTracedAsync(Relay relay, HttpRequestMessage request, string traceParent, string? traceState = null)
    {
        using (request)
        {
            var body = await request.Content!.ReadAsByteArrayAsync();
            var head = new StringBuilder()
                .Append(CultureInfo.InvariantCulture, $"POST /{request.RequestUri} HTTP/1.1\r\n")
                .Append(CultureInfo.InvariantCulture, $"Host: {relay.Ingress.BaseAddress.Authority}\r\n")
                .Append("Content-Type: application/json\r\n")
                .Append(CultureInfo.InvariantCulture, $"Content-Length: {body.Length}\r\n")
                .Append(CultureInfo.InvariantCulture, $"traceparent: {traceParent}\r\n")
                .Append(traceState is null ? "" : $"tracestate: {traceState}\r\n")
                .Append("Connection: close\r\n");
            foreach (var header in request.Headers)
            {
                head.Append(CultureInfo.InvariantCulture, $"{header.Key}: {string.Join(",", header.Value)}\r\n");
            }
            head.Append("\r\n");
            using var tcp = new TcpClient();
            await tcp.ConnectAsync(relay.Ingress.BaseAddress.Host, relay.Ingress.BaseAddress.Port);
            await using var stream = tcp.GetStream();
            await stream.WriteAsync(Encoding.ASCII.GetBytes(head.ToString()));
            await stream.WriteAsync(body);
            using var reader = new StreamReader(stream, Encoding.ASCII);
            var statusLine = await reader.ReadLineAsync() ?? "";
            await reader.ReadToEndAsync();
            return new HttpResponseMessage((HttpStatusCode)int.Parse(statusLine.Split(' ')[1], CultureInfo.InvariantCulture));
        }
    }

    private List<Activity> InTrace(string traceId) => _stopped.Where(a => a.TraceId.ToHexString() == traceId).ToList();

    /// <summary>Ingress server, producer, consumer, the Azure POST and the emulator's server span under it.</summary>
    private static bool AllStopped(List<Activity> spans)
    {
        var post = spans.FirstOrDefault(a => a.OperationName == "System.Net.Http.HttpRequestOut");
        return post is not null
            && spans.Any(a => a.Source.Name == PortAzureDiagnostics.Name && a.Kind == ActivityKind.Producer)
            && spans.Any(a => a.Source.Name == PortAzureDiagnostics.Name && a.Kind == ActivityKind.Consumer)
            && spans.Count(a => a.Kind == ActivityKind.Server) == 2
            && spans.Any(a => a.Kind == ActivityKind.Server && a.ParentSpanId == post.SpanId);
    }

    [Fact]
    public async Task AcceptedRun_PortTraceparent_JoinsOneTraceUpToTheAzurePost()
    {
        await using var relay = await Relay.StartAsync();
        var (traceParent, traceId) = NewTraceParent();
        var runId = TestRuns.NewRunId();

        using var response = await SendTracedAsync(relay, TestRuns.Body(runId), traceParent);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(20), "delivered");
        // Spans stop after the answers they cover: the consumer span once its outcome is in Redis, the server
        // spans after their responses are written. Wait for every one the assertions below look at.
        await Eventually.HoldsAsync(() => Task.FromResult(AllStopped(InTrace(traceId))), TimeSpan.FromSeconds(10), "all five spans stopped");

        var received = (await relay.EmulatorApi.RequestsAsync())[0];
        Assert.Equal(traceId, received.Header("traceparent")!.Split('-')[1]);

        var spans = InTrace(traceId);
        var producer = Assert.Single(spans, a => a.Source.Name == PortAzureDiagnostics.Name && a.Kind == ActivityKind.Producer);
        Assert.Equal($"send {RedisKeys.Stream}", producer.DisplayName);
        Assert.Equal("redis_streams", producer.GetTagItem("messaging.system"));
        Assert.Equal(RedisKeys.Stream, producer.GetTagItem("messaging.destination.name"));
        Assert.Equal("send", producer.GetTagItem("messaging.operation.type"));
        Assert.Equal(runId, producer.GetTagItem("portazure.run_id"));
        Assert.Equal("accepted", producer.GetTagItem("portazure.outcome"));
        var deliveryId = (string)producer.GetTagItem("portazure.delivery_id")!;

        // Port's span -> the Ingress's server span -> the producer span.
        var server = Assert.Single(spans, a => a.SpanId == producer.ParentSpanId);
        Assert.Equal(ActivityKind.Server, server.Kind);
        Assert.Equal(traceParent.Split('-')[2], server.ParentSpanId.ToHexString());

        var process = Assert.Single(spans, a => a.Source.Name == PortAzureDiagnostics.Name && a.Kind == ActivityKind.Consumer);
        Assert.Equal(producer.SpanId, process.ParentSpanId);
        Assert.Equal("process", process.GetTagItem("messaging.operation.type"));
        Assert.Equal("process", process.GetTagItem("messaging.operation.name"));
        Assert.Equal("send", producer.GetTagItem("messaging.operation.name"));
        // One id for the message on both sides (the stream entry's id named only a first attempt).
        Assert.Equal(deliveryId, producer.GetTagItem("messaging.message.id"));
        Assert.Equal(deliveryId, process.GetTagItem("messaging.message.id"));
        Assert.Equal(deliveryId, process.GetTagItem("portazure.delivery_id"));
        Assert.Equal(runId, process.GetTagItem("portazure.run_id"));
        Assert.Equal(1, process.GetTagItem("portazure.attempt"));
        Assert.Null(process.GetTagItem("portazure.reclaimed"));
        Assert.Equal(TestRuns.Org, process.GetTagItem("azure_devops.org"));
        Assert.Equal(TestRuns.Webhook, process.GetTagItem("azure_devops.webhook"));

        var post = Assert.Single(spans, a => a.OperationName == "System.Net.Http.HttpRequestOut");
        Assert.Equal(process.SpanId, post.ParentSpanId);
        // And "Azure" (the emulator) continues the same trace under the POST.
        Assert.Single(spans, a => a.Kind == ActivityKind.Server && a.ParentSpanId == post.SpanId);
    }

    [Fact]
    public async Task ReportedRun_ThePortReportJoinsTheAttemptsTrace()
    {
        await using var relay = await Relay.StartAsync(c => c["Port:ClientId"] = "relay-client");
        var (traceParent, traceId) = NewTraceParent();
        var runId = TestRuns.NewRunId();

        // Port's vendor state goes along the whole trace, the report's span included.
        using var response = await SendTracedAsync(relay, TestRuns.Body(runId), traceParent, traceState: "port=run1");
        bool ReportStopped(List<Activity> spans) => spans.FirstOrDefault(a => a.DisplayName == "report to Port") is { } report
            && spans.Any(a => a.OperationName == "System.Net.Http.HttpRequestOut" && a.ParentSpanId == report.SpanId);
        await Eventually.HoldsAsync(() => Task.FromResult(ReportStopped(InTrace(traceId))), TimeSpan.FromSeconds(20), "the report's span and its call to Port");

        var spans = InTrace(traceId);
        var process = Assert.Single(spans, a => a.Source.Name == PortAzureDiagnostics.Name && a.Kind == ActivityKind.Consumer);
        var report = Assert.Single(spans, a => a.DisplayName == "report to Port");
        Assert.Equal(process.SpanId, report.ParentSpanId);
        Assert.Equal(runId, report.GetTagItem("portazure.run_id"));
        Assert.Equal(process.GetTagItem("portazure.delivery_id"), report.GetTagItem("portazure.delivery_id"));
        Assert.Equal("sent", report.GetTagItem("portazure.outcome"));
        Assert.Equal("port=run1", process.TraceStateString);
        Assert.Equal("port=run1", report.TraceStateString);
        Assert.Null(report.GetTagItem("portazure.reclaimed"));
        Assert.Contains(spans, a => a.OperationName == "System.Net.Http.HttpRequestOut" && a.ParentSpanId == report.SpanId
            && a.GetTagItem("url.full") is string url && url.Contains($"/v1/actions/runs/{runId}/logs", StringComparison.Ordinal));
        // The Dispatcher's lines about the run carry its trace id: "Delivered" (2001) and the report's "Sent" (2201).
        var deliveryId = (string)report.GetTagItem("portazure.delivery_id")!;
        Assert.All(new[] { "[2001]", "[2201]" }, id => Assert.Equal(traceId, Assert.Single(relay.Dispatcher.Logs.TracedLines,
            l => l.Line.Contains(id, StringComparison.Ordinal) && l.Line.Contains(deliveryId, StringComparison.Ordinal)).TraceId));
    }

    [Fact]
    public async Task RetriedRun_EachAttemptIsANewSpanInTheSameTrace()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        var (traceParent, traceId) = NewTraceParent();

        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 2, TimeSpan.FromSeconds(20), "retried and delivered");
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Count(a => a.Kind == ActivityKind.Consumer) == 2), TimeSpan.FromSeconds(5), "two attempt spans");

        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.All(requests, r => Assert.Equal(traceId, r.Header("traceparent")!.Split('-')[1]));
        var attempts = InTrace(traceId).Where(a => a.Kind == ActivityKind.Consumer).OrderBy(a => a.StartTimeUtc).ToList();
        Assert.Equal([1, 2], attempts.Select(a => (int)a.GetTagItem("portazure.attempt")!));
        Assert.Equal(ActivityStatusCode.Error, attempts[0].Status);
        Assert.Equal("transient", attempts[0].GetTagItem("portazure.outcome"));
        Assert.Equal("delivered", attempts[1].GetTagItem("portazure.outcome"));
    }

    [Fact]
    public async Task DeadLetteredRun_AttemptSpanIsMarkedError()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 } } });
        var (traceParent, traceId) = NewTraceParent();

        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer)), TimeSpan.FromSeconds(20), "attempt span");

        var attempt = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Consumer);
        Assert.Equal(ActivityStatusCode.Error, attempt.Status);
        Assert.Equal("permanent", attempt.GetTagItem("portazure.outcome"));
        Assert.Equal(404, attempt.GetTagItem("http.response.status_code"));
        Assert.Equal("permanent_failure", attempt.GetTagItem("portazure.reason"));
    }

    [Fact]
    public async Task DeadLetteredRun_RetriesExhausted_TheLastAttemptSpanSaysSo()
    {
        // Its outcome alone ("transient") reads like one more retry.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAttempts"] = "1");
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        var (traceParent, traceId) = NewTraceParent();

        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer)), TimeSpan.FromSeconds(20), "attempt span");

        var attempt = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Consumer);
        Assert.Equal(ActivityStatusCode.Error, attempt.Status);
        Assert.Equal("transient", attempt.GetTagItem("portazure.outcome"));
        Assert.Equal("retries_exhausted", attempt.GetTagItem("portazure.reason"));
    }

    [Fact]
    public async Task ReplayedRun_ItsAttemptsSayWhichReplayTheyBelongTo_RetriesToo()
    {
        // The replay starts the attempts again from 1, in the same trace: two "attempt 1" spans, told apart only by this.
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 }, new { status = 503 } } });
        var (traceParent, traceId) = NewTraceParent();
        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        var producer = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Producer);
        var deliveryId = (string)producer.GetTagItem("portazure.delivery_id")!;
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer)), TimeSpan.FromSeconds(20), "dead-lettered");
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 1, TimeSpan.FromSeconds(10), "a dead letter");

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var replayed = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, replayed.StatusCode);
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Count(a => a.Kind == ActivityKind.Consumer) == 3), TimeSpan.FromSeconds(20),
            "the replay's attempt, refused 503, and its retry");

        var attempts = InTrace(traceId).Where(a => a.Kind == ActivityKind.Consumer).OrderBy(a => a.StartTimeUtc).ToList();
        Assert.Equal([1, 1, 2], attempts.Select(a => (int)a.GetTagItem("portazure.attempt")!));
        Assert.Equal([null, 1, 1], attempts.Select(a => (int?)a.GetTagItem("portazure.replays")));
        Assert.Equal(["permanent", "transient", "delivered"], attempts.Select(a => (string?)a.GetTagItem("portazure.outcome")));
        Assert.All(attempts, a => Assert.Equal(producer.SpanId, a.ParentSpanId));
        // The operator's request, a trace of its own, is found by the delivery id too (the Dispatcher's span, behind the edge),
        // and links to the run's trace.
        var request = Assert.Single(_stopped, a => a.Kind == ActivityKind.Server && deliveryId.Equals(a.GetTagItem("portazure.delivery_id"))
            && a.GetTagItem("http.route") is string route && route.EndsWith("/replay", StringComparison.Ordinal));
        Assert.Equal(traceId, Assert.Single(request.Links).Context.TraceId.ToHexString());
    }

    [Fact]
    public async Task BatchReplay_TheOperatorsRequestLinksToEveryReplayedRunsTrace()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 }, new { status = 404 } } });
        var traces = new List<string>();
        foreach (var _ in new[] { 1, 2 })
        {
            var (traceParent, traceId) = NewTraceParent();
            using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            traces.Add(traceId);
        }
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 2, TimeSpan.FromSeconds(20), "two dead letters");

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay");
        using var replayed = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.OK, replayed.StatusCode);

        // (Every test's spans reach this listener: the request is the one linked to these runs.)
        bool Ours(Activity a) => a.Kind == ActivityKind.Server && a.GetTagItem("http.route") is "/api/deadletters/replay"
            && a.Links.Any(l => traces.Contains(l.Context.TraceId.ToHexString()));
        await Eventually.HoldsAsync(() => Task.FromResult(_stopped.Any(Ours)), TimeSpan.FromSeconds(10), "the Dispatcher's span of the batch replay");
        var request = Assert.Single(_stopped, Ours);
        Assert.Equal(traces.Order(), request.Links.Select(l => l.Context.TraceId.ToHexString()).Order());
    }

    [Fact]
    public async Task DiscardedDeadLetter_TheOperatorsRequestIsFoundByTheDeliveryIdAndLinksToTheRunsTrace()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404 } } });
        var (traceParent, traceId) = NewTraceParent();
        using var sent = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        var deliveryId = (string)Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Producer).GetTagItem("portazure.delivery_id")!;
        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 1, TimeSpan.FromSeconds(20), "a dead letter");

        using var discard = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{deliveryId}");
        using var discarded = await relay.Ingress.Client.SendAsync(discard);
        Assert.Equal(HttpStatusCode.NoContent, discarded.StatusCode);

        bool Discard(Activity a) => a.Kind == ActivityKind.Server && deliveryId.Equals(a.GetTagItem("portazure.delivery_id"))
            && a.GetTagItem("http.request.method") is "DELETE";
        await Eventually.HoldsAsync(() => Task.FromResult(_stopped.Any(Discard)), TimeSpan.FromSeconds(10), "the Dispatcher's span of the discard, tagged");
        var request = Assert.Single(_stopped, Discard);
        Assert.Equal(traceId, Assert.Single(request.Links).Context.TraceId.ToHexString());
    }

    [Fact]
    public async Task DeadLetteredWithoutATry_ItsProcessSpanSaysWhy()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var (traceParent, traceId) = NewTraceParent();
        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var producer = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Producer);
        var deliveryId = (string)producer.GetTagItem("portazure.delivery_id")!;
        // Overwritten by something else: whether the run was posted is unknown, so it is dead-lettered without a POST.
        await relay.Db.StringSetAsync(RedisKeys.Delivery(deliveryId), "not a hash");

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer)), TimeSpan.FromSeconds(20), "a span for the dead letter");

        var span = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Consumer);
        Assert.Equal($"process {RedisKeys.Stream}", span.DisplayName);
        Assert.Equal(producer.SpanId, span.ParentSpanId);
        Assert.Equal(ActivityStatusCode.Error, span.Status);
        Assert.Equal("process", span.GetTagItem("messaging.operation.type"));
        Assert.Equal("dead_lettered", span.GetTagItem("portazure.outcome"));
        Assert.Equal("record_damaged", span.GetTagItem("portazure.reason"));
        Assert.Equal(deliveryId, span.GetTagItem("portazure.delivery_id"));
        // No try was made.
        Assert.Null(span.GetTagItem("portazure.attempt"));
        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ReclaimedRun_ItsProcessSpanSaysReclaimed_AndOneAlreadyFinishedSaysSoWithoutAPost(bool alreadyDelivered)
    {
        // A crash leaves a run's entry pending for a consumer that is gone; whoever reclaims it may post it a second time.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "1";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.2";
        }, dispatchers: 0);
        var (traceParent, traceId) = NewTraceParent();
        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var deliveryId = (string)Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Producer).GetTagItem("portazure.delivery_id")!;
        await PortAzure.Dispatcher.Delivery.ConsumerGroup.EnsureAsync(relay.Db, RedisKeys.Stream, RedisKeys.ConsumerGroup);
        Assert.Single(await relay.Db.StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, "crashed-consumer", ">", 10));
        if (alreadyDelivered)
        {
            // It had been delivered and recorded; only the acknowledgement was lost.
            await relay.Db.HashSetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State, DeliveryStates.Delivered);
        }

        await relay.AddDispatcherAsync();
        await Eventually.HoldsAsync(async () => await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0
            && InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer), TimeSpan.FromSeconds(20), "the entry reclaimed and finished");

        var span = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Consumer);
        Assert.Equal(true, span.GetTagItem("portazure.reclaimed"));
        Assert.Equal(alreadyDelivered ? "already_finished" : "delivered", span.GetTagItem("portazure.outcome"));
        Assert.Equal(alreadyDelivered ? null : 1, (int?)span.GetTagItem("portazure.attempt"));
        Assert.Equal(alreadyDelivered ? 0 : 1, (await relay.EmulatorApi.RequestsAsync()).Count);
        if (alreadyDelivered)
        {
            // Its line, written before anything was posted, is in the run's trace too.
            Assert.Equal(traceId, Assert.Single(relay.Dispatcher.Logs.TracedLines,
                l => l.Line.Contains("[2005]", StringComparison.Ordinal) && l.Line.Contains(deliveryId, StringComparison.Ordinal)).TraceId);
        }
    }

    [Fact]
    public async Task PostCutOffAtTheStop_ItsProcessSpanIsAnErrorNamingTheExceptionType()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:ShutdownGraceSeconds"] = "0";
            c["Dispatcher:RequestTimeoutSeconds"] = "15";
        });
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 5000 });
        var (traceParent, traceId) = NewTraceParent();
        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 1, TimeSpan.FromSeconds(10), "the POST is in flight");

        var dispatcher = relay.Dispatcher;
        await relay.StopDispatcherAsync(dispatcher);

        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer)), TimeSpan.FromSeconds(10), "the span ended");
        var span = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Consumer);
        Assert.Equal(ActivityStatusCode.Error, span.Status);
        Assert.Equal(1, span.GetTagItem("portazure.attempt"));
        Assert.Null(span.GetTagItem("portazure.outcome"));
        var type = Assert.IsType<string>(span.GetTagItem("error.type"));
        Assert.True(typeof(OperationCanceledException).IsAssignableFrom(Type.GetType(type)), type);
        // The line that says so is in the run's trace.
        Assert.Equal(traceId, Assert.Single(dispatcher.Logs.TracedLines, l => l.Line.Contains("[2109]", StringComparison.Ordinal)).TraceId);
    }

    [Fact]
    public async Task PausedTarget_AHeldRunsProcessSpanSaysItWaitsForTheTarget()
    {
        // "Why has my run not gone out?": its trace shows each time it was looked at and held back.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:TargetHealth:FailureThreshold"] = "1";
            c["Dispatcher:TargetHealth:ProbeIntervalSeconds"] = "60";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        var (firstParent, firstTrace) = NewTraceParent();
        using (var first = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), firstParent))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        }
        // Recorded when the first run's attempt finished, a moment after the emulator answered.
        await Eventually.HoldsAsync(async () => await relay.Db.HashExistsAsync(RedisKeys.PausedTargets, RedisKeys.Target(TestRuns.Org, TestRuns.Webhook)),
            TimeSpan.FromSeconds(20), "the first run's 503 pauses the target");

        var (traceParent, traceId) = NewTraceParent();
        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Consumer)), TimeSpan.FromSeconds(20), "the held run's span");

        var span = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Consumer);
        Assert.Equal("target_paused", span.GetTagItem("portazure.outcome"));
        Assert.True(span.Recorded);
        Assert.Equal(ActivityStatusCode.Unset, span.Status);
        Assert.Null(span.GetTagItem("portazure.attempt"));
        Assert.Null(span.GetTagItem("portazure.reclaimed"));

        // The first run's retry, due in about a second, is held from the schedule: a hold that repeats every probe interval for as
        // long as the pause lasts, left out of the exported trace (its failed attempt's span stays).
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(firstTrace).Any(a => a.Kind == ActivityKind.Consumer
            && a.GetTagItem("portazure.outcome") is "target_paused")), TimeSpan.FromSeconds(20), "the first run's retry held");
        var attempts = InTrace(firstTrace).Where(a => a.Kind == ActivityKind.Consumer).OrderBy(a => a.StartTimeUtc).ToList();
        Assert.Equal(["transient", "target_paused"], attempts.Select(a => (string?)a.GetTagItem("portazure.outcome")));
        Assert.Equal([true, false], attempts.Select(a => a.Recorded));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
    }

    [Fact]
    public async Task ReplicationUnconfirmed_TheCallIsRefusedButTheRunIsSentAndDeliveredUnderItsProducerSpan()
    {
        // No replica to confirm the write: Port is answered 503, and the run, queued, is delivered.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Ingress:WaitForReplicas"] = "1";
            c["Ingress:ReplicaWaitMilliseconds"] = "50";
        });
        var (traceParent, traceId) = NewTraceParent();

        using var response = await SendTracedAsync(relay, TestRuns.Body(TestRuns.NewRunId()), traceParent);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        await Eventually.HoldsAsync(() => Task.FromResult(AllStopped(InTrace(traceId))), TimeSpan.FromSeconds(20), "delivered, every span stopped");

        var spans = InTrace(traceId);
        var server = Assert.Single(spans, a => a.Kind == ActivityKind.Server && a.ParentSpanId.ToHexString() == traceParent.Split('-')[2]);
        Assert.Equal("rejected", server.GetTagItem("portazure.outcome"));
        Assert.Equal("replication_unconfirmed", server.GetTagItem("portazure.reason"));
        var producer = Assert.Single(spans, a => a.Kind == ActivityKind.Producer);
        Assert.Equal("accepted", producer.GetTagItem("portazure.outcome"));
        Assert.Equal("replication_unconfirmed", producer.GetTagItem("portazure.reason"));
        Assert.Equal(ActivityStatusCode.Error, producer.Status);
        var process = Assert.Single(spans, a => a.Kind == ActivityKind.Consumer);
        Assert.Equal(producer.SpanId, process.ParentSpanId);
        Assert.Equal("delivered", process.GetTagItem("portazure.outcome"));
    }

    [Fact]
    public async Task RedisUnreachable_TheCallIsRefusedOnItsSpanAndTheSendSpanSaysWhyItFailed()
    {
        using var closed = new ClosedPort();
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = closed.RedisConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
        });

        // In a trace of this test's own: other tests' Ingresses refuse calls for the same reason meanwhile.
        string traceId;
        using (var root = new Activity("this test").Start())
        {
            traceId = root.TraceId.ToHexString();
            using var response = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()));
            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        }
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(traceId).Any(a => a.Kind == ActivityKind.Producer)
            && InTrace(traceId).Any(a => a.Kind == ActivityKind.Server)), TimeSpan.FromSeconds(10), "both spans stopped");

        var send = Assert.Single(InTrace(traceId), a => a.Kind == ActivityKind.Producer);
        Assert.Equal(ActivityStatusCode.Error, send.Status);
        Assert.Equal(RejectionReasons.RedisUnavailable, send.GetTagItem("portazure.reason"));
        var call = Assert.Single(InTrace(traceId), a => a.SpanId == send.ParentSpanId);
        Assert.Equal(ActivityKind.Server, call.Kind);
        Assert.Equal("rejected", call.GetTagItem("portazure.outcome"));
        Assert.Equal(RejectionReasons.RedisUnavailable, call.GetTagItem("portazure.reason"));
    }

    [Fact]
    public async Task DuplicateAndRejectedCalls_AreTaggedWithTheirOutcome()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        using var first = await relay.SendRunAsync(body);
        var (duplicateParent, duplicateTrace) = NewTraceParent();
        using var duplicate = await SendTracedAsync(relay, body, duplicateParent);
        var (rejectedParent, rejectedTrace) = NewTraceParent();
        using var rejectedResponse = await SendTracedAsync(relay, TestRuns.Signed(body, secret: "wrong"), rejectedParent);
        await Eventually.HoldsAsync(() => Task.FromResult(InTrace(rejectedTrace).Any(a => a.Kind == ActivityKind.Server)), TimeSpan.FromSeconds(5), "server span");

        var duplicateSpan = Assert.Single(InTrace(duplicateTrace), a => a.Kind == ActivityKind.Producer);
        Assert.Equal("duplicate", duplicateSpan.GetTagItem("portazure.outcome"));
        // The message is the one already queued: the id made for the call named nothing.
        var queued = (await first.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString();
        Assert.Equal(queued, duplicateSpan.GetTagItem("messaging.message.id"));
        Assert.Equal(queued, duplicateSpan.GetTagItem("portazure.delivery_id"));
        var rejectedSpan = Assert.Single(InTrace(rejectedTrace), a => a.Kind == ActivityKind.Server);
        Assert.Equal("rejected", rejectedSpan.GetTagItem("portazure.outcome"));
        Assert.Equal("signature_invalid", rejectedSpan.GetTagItem("portazure.reason"));
        Assert.DoesNotContain(InTrace(rejectedTrace), a => a.Kind == ActivityKind.Producer);
    }
}
