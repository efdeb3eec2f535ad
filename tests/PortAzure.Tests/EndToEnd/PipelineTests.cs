using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.EndToEnd;

/// <summary>Port call -> Ingress -> Redis -> Dispatcher -> emulator, all real hosts over loopback.</summary>
public class PipelineTests
{
    // Generous: the suite runs many hosts at once on 2 cores.
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(45);

    [Fact]
    public async Task Run_ThroughTheRelay_ArrivesOnceWithIdenticalBytesAndAzureSignature()
    {
        await using var relay = await Relay.StartAsync();
        var runId = TestRuns.NewRunId();
        var body = TestRuns.Body(runId);

        using var response = await relay.SendRunAsync(body);
        var deliveryId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString();
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count > 0, Wait, "the emulator receives the run");
        await Task.Delay(1000);

        var received = Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal("POST", received.Method);
        Assert.Equal($"/{TestRuns.Org}/_apis/public/distributedtask/webhooks/{TestRuns.Webhook}", received.Path);
        Assert.Equal("?api-version=6.0-preview", received.QueryString);
        Assert.Equal(body, received.Body);
        Assert.True(received.SignatureValid);
        Assert.Equal(200, received.StatusCode);
        Assert.Equal(Convert.ToHexString(HMACSHA1.HashData(Encoding.UTF8.GetBytes(TestRuns.Secret), body)), received.Header("X-Port-Signature"));
        Assert.StartsWith("application/json", received.Header("Content-Type"), StringComparison.Ordinal);
        Assert.Equal(deliveryId, received.Header("Idempotency-Key"));
        Assert.Equal(runId, received.Header("X-Port-Run-Id"));
    }

    [Fact]
    public async Task Run_Delivered_RecordShowsDeliveredThroughTheOperatorApi()
    {
        await using var relay = await Relay.StartAsync();
        var runId = TestRuns.NewRunId();
        using var response = await relay.SendRunAsync(TestRuns.Body(runId));
        var location = response.Headers.Location!.ToString();

        JsonElement view = default;
        await Eventually.HoldsAsync(async () =>
        {
            using var request = relay.Operator(HttpMethod.Get, location);
            using var answer = await relay.Ingress.Client.SendAsync(request);
            view = await answer.Content.ReadFromJsonAsync<JsonElement>();
            return answer.IsSuccessStatusCode && view.GetProperty("state").GetString() == "delivered";
        }, Wait, "the delivery is recorded as delivered");

        Assert.Equal(runId, view.GetProperty("runId").GetString());
        Assert.Equal(1, view.GetProperty("attempts").GetInt32());
        Assert.Equal(200, view.GetProperty("lastStatus").GetInt32());
        Assert.Equal(32, view.GetProperty("traceId").GetString()!.Length);
        Assert.Single(view.GetProperty("attemptHistory").EnumerateArray());
    }

    [Fact]
    public async Task Run_Sha1PrefixedFormatAndCustomHeader_AreSentAsConfigured()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:SignatureFormat"] = "Sha1Prefixed";
            c["AzureDevOps:SignatureHeader"] = "X-WH-Checksum";
        });
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var response = await relay.SendRunAsync(body);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count > 0, Wait, "the emulator receives the run");

        var received = Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal("sha1=" + Convert.ToHexStringLower(HMACSHA1.HashData(Encoding.UTF8.GetBytes(TestRuns.Secret), body)), received.Header("X-WH-Checksum"));
        Assert.Null(received.Header("X-Port-Signature"));
    }

    [Fact]
    public async Task Run_TargetWithItsOwnSecret_IsSignedWithThatSecret()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:Targets:0:Org"] = TestRuns.Org;
            c["AzureDevOps:Targets:0:Webhook"] = TestRuns.Webhook;
            c["AzureDevOps:Targets:0:Secret"] = "service-connection-secret";
        });
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var response = await relay.SendRunAsync(body);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count > 0, Wait, "the emulator receives the run");

        var received = Assert.Single(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal(Convert.ToHexString(HMACSHA1.HashData("service-connection-secret"u8.ToArray(), body)), received.Header("X-Port-Signature"));
    }

    [Fact]
    public async Task Runs_TwoHundredAtOnce_EachArrivesExactlyOnce()
    {
        await using var relay = await Relay.StartAsync();
        var bodies = Enumerable.Range(0, 200).Select(_ => TestRuns.Body(TestRuns.NewRunId())).ToList();

        var responses = await Task.WhenAll(bodies.Select(b => relay.SendRunAsync(b)));
        Assert.All(responses, r => Assert.Equal(HttpStatusCode.Accepted, r.StatusCode));
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 200, Wait, "200 runs arrive");
        await Task.Delay(500);

        var received = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(200, received.Count);
        Assert.Equal(200, received.Select(r => r.Header("Idempotency-Key")).Distinct().Count());
        Assert.All(received, r => Assert.True(r.SignatureValid));
    }

    [Fact]
    public async Task Run_DuplicateFromPort_ReachesAzureOnce()
    {
        await using var relay = await Relay.StartAsync();
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var first = await relay.SendRunAsync(body);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count > 0, Wait, "the emulator receives the run");
        using var second = await relay.SendRunAsync(body);
        await Task.Delay(1000);

        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
    }

    [Fact]
    public async Task Dispatcher_StartedAfterRunsWereQueued_DeliversThem()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        for (var i = 0; i < 5; i++)
        {
            using var response = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }

        await relay.AddDispatcherAsync();

        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count == 5, Wait, "the queued runs are delivered");
    }
}
