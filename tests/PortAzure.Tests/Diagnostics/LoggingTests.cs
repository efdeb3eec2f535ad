using System.Net;
using System.Text.Json;
using Microsoft.Extensions.Configuration;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Diagnostics;

public class LoggingTests
{
    // A line per successful run is CPU per run (docs/benchmarks.md): deployments log successes at Debug only,
    // while the span, the metrics and the delivery record still show every run.
    [Fact]
    public async Task DeliveredRun_SuccessLines_AreDebugOnlyAndCarryTheIds()
    {
        await using var relay = await Relay.StartAsync();
        var runId = TestRuns.NewRunId();

        using var response = await relay.SendRunAsync(TestRuns.Body(runId));
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var deliveryId = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("deliveryId").GetString()!;
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Any(r => r.Header("X-Port-Run-Id") == runId),
            TimeSpan.FromSeconds(20), "the run reaches the emulator");
        await Eventually.HoldsAsync(() => Task.FromResult(relay.Dispatcher.Logs.Lines.Any(l => l.Contains($"Delivered {deliveryId}", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(5), "the Dispatcher logs the delivery");

        Assert.Contains(relay.Ingress.Logs.Lines, l =>
            l.StartsWith("Debug PortAzure.Ingress.Webhooks.WebhookHandler[1001]: ", StringComparison.Ordinal) &&
            l.Contains($"Accepted run {runId}", StringComparison.Ordinal) && l.Contains(deliveryId, StringComparison.Ordinal));
        Assert.Contains(relay.Dispatcher.Logs.Lines, l =>
            l.StartsWith("Debug PortAzure.Dispatcher.Delivery.DeliveryProcessor[2001]: ", StringComparison.Ordinal) &&
            l.Contains($"Delivered {deliveryId}", StringComparison.Ordinal));
        foreach (var host in new[] { relay.Ingress, relay.Dispatcher })
        {
            Assert.DoesNotContain(host.Logs.Lines, l => !l.StartsWith("Debug ", StringComparison.Ordinal) && !l.StartsWith("[scope] ", StringComparison.Ordinal) &&
                (l.Contains(runId, StringComparison.Ordinal) || l.Contains(deliveryId, StringComparison.Ordinal)));
        }
    }

    [Fact]
    public async Task RedisUnreachable_ItsPasswordIsInNoLogLine()
    {
        // Every Redis failure is logged with its exception (and the health check's): none may carry the connection
        // string's password, whose key names no secret for the test hosts' own check to look for.
        const string password = "redis-pw-not-for-logs-7731";
        using var closed = new ClosedPort();
        var config = new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = $"127.0.0.1:{closed.Port},password={password},abortConnect=false,connectTimeout=300,asyncTimeout=500",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Dispatcher:PollIntervalSeconds"] = "0.2",
        };
        await using var ingress = await TestHost.StartIngressAsync(config);
        await using var dispatcher = await TestHost.StartDispatcherAsync(config);

        using (var refused = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId())))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        }
        foreach (var host in new[] { ingress, dispatcher })
        {
            using var health = await host.Client.GetAsync("/health");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        }
        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains("[2103]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(20), "the delivery loop logs the Redis failure");

        foreach (var host in new[] { ingress, dispatcher })
        {
            Assert.Contains(host.Logs.Lines, l => l.Contains("RedisConnectionException", StringComparison.Ordinal) || l.Contains("RedisTimeoutException", StringComparison.Ordinal));
            host.Logs.AssertNoneContain([password]);
        }
    }

    // The test hosts turn the relay's Debug lines on; what a deployment runs with is the projects' appsettings.json.
    [Theory]
    [InlineData("PortAzure.Ingress")]
    [InlineData("PortAzure.Dispatcher")]
    public void ShippedSettings_LeaveTheRelaysOwnLinesAtInformation(string project)
    {
        var settings = new ConfigurationBuilder().AddJsonFile(Path.Combine(Repository.Root, project, "appsettings.json")).Build();

        Assert.Equal("Information", settings["Logging:LogLevel:Default"]);
        Assert.DoesNotContain(settings.GetSection("Logging:LogLevel").GetChildren(), level =>
            level.Key.StartsWith("PortAzure", StringComparison.Ordinal) && level.Value is "Debug" or "Trace");
    }
}
