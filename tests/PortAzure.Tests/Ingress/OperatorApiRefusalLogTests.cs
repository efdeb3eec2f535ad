using System.Net;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using PortAzure.Ingress.Edge;
using PortAzure.Security;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class OperatorApiRefusalLogTests
{
    [Fact]
    public async Task Refused_CallsInALoopWithoutAKey_OneWarningAndEachAtDebug()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);

        for (var i = 0; i < 30; i++)
        {
            using var response = await relay.Ingress.Client.GetAsync(new Uri("/api/stats", UriKind.Relative));
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }

        // One line, or a second if the loop outlasted the 10 s window on a loaded machine (the window itself: below).
        Assert.InRange(relay.Ingress.Logs.Lines.Count(l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains("[1101]", StringComparison.Ordinal)), 1, 2);
        Assert.Equal(30, relay.Ingress.Logs.Lines.Count(l => l.StartsWith("Debug", StringComparison.Ordinal) && l.Contains("[1103]", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Post_UnsignedCallsInALoop_OneInformationLinePerReasonAndEachAtDebug()
    {
        // Webhook rejections come before the caller is known, as the operator API's do: the same flood.
        await using var relay = await Relay.StartAsync(dispatchers: 0);

        for (var i = 0; i < 30; i++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, TestRuns.Path()) { Content = new ByteArrayContent(TestRuns.Body(TestRuns.NewRunId())) };
            request.Content.Headers.ContentType = new("application/json");
            using var response = await relay.Ingress.Client.SendAsync(request);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }

        // One line, or a second if the loop outlasted the 10 s window on a loaded machine.
        var lines = relay.Ingress.Logs.Lines.Where(l => l.StartsWith("Information", StringComparison.Ordinal) && l.Contains("[1003]", StringComparison.Ordinal)).ToList();
        Assert.InRange(lines.Count, 1, 2);
        Assert.All(lines, l => Assert.Contains("signature_missing", l, StringComparison.Ordinal));
        Assert.Equal(30, relay.Ingress.Logs.Lines.Count(l => l.StartsWith("Debug", StringComparison.Ordinal) && l.Contains("[1005]", StringComparison.Ordinal)));
    }

    [Fact]
    public void Refused_AfterTheInterval_TheNextWarningCountsEveryRefusalSinceTheLast()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var sink = new LogSink();
        using var loggers = LoggerFactory.Create(b => b.AddProvider(sink).SetMinimumLevel(LogLevel.Debug));
        var log = new OperatorApiRefusalLog(clock, loggers.CreateLogger<OperatorApiRefusalLog>());

        log.Refused(AdminApiKey.Result.Missing);
        for (var i = 0; i < 4; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(2));
            log.Refused(AdminApiKey.Result.Invalid);
        }
        clock.Advance(TimeSpan.FromSeconds(3));
        log.Refused(AdminApiKey.Result.Invalid);

        var warnings = sink.Lines.Where(l => l.StartsWith("Warning", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, warnings.Count);
        Assert.Contains("Refused=1,", warnings[0], StringComparison.Ordinal);
        Assert.Contains("Refused=5,", warnings[1], StringComparison.Ordinal);
    }
}
