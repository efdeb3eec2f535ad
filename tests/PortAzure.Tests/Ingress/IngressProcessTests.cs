using System.Net;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress;

/// <summary>The Ingress run on its own, as a deployment runs it: the built dll and environment variables.</summary>
[Collection(HeavyTests.Name)]
public class IngressProcessTests
{
    [Fact]
    public async Task Run_OwnProcessConfiguredByEnvironment_AcceptsASignedRunIntoTheStreamAndStopsOnSigterm()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        using var ingress = ServiceProcess.StartIngress(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
        });
        using var client = new HttpClient { BaseAddress = await ingress.ListeningAddress.WaitAsync(TimeSpan.FromSeconds(60)) };
        await Eventually.HoldsAsync(async () =>
        {
            try
            {
                using var health = await client.GetAsync("/health");
                return health.StatusCode == HttpStatusCode.OK;
            }
            catch (HttpRequestException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(60), () => "the Ingress process reports healthy; its output:\n" + ingress.Output);

        var runId = TestRuns.NewRunId();
        using var response = await TestRuns.SendAsync(client, TestRuns.Body(runId));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        await using var redis = await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString);
        var entry = Assert.Single(await redis.GetDatabase().StreamRangeAsync(RedisKeys.Stream));
        Assert.Equal(runId, DeliveryEntry.FromStreamEntry(entry)!.RunId);

        Assert.True(ingress.Terminate(TimeSpan.FromSeconds(30)), "the Ingress exits on SIGTERM");
        Assert.Equal(0, ingress.ExitCode);
    }

    [Fact]
    public void Run_OptionRefusedByValidation_ExitsWithOneAfterLoggingWhyOnce()
    {
        // app.Run() let the validation exception escape: .NET printed it again as unhandled and aborted (exit 134).
        using var ingress = ServiceProcess.StartIngress(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:MaxBodyBytes"] = "-5",
        });

        ingress.AssertRefusedAtStart("Hosting failed to start", "Ingress:MaxBodyBytes must be between");
    }

    [Fact]
    public void Run_KestrelLimitsItsSettersRefuse_ExitsWithOneNamingEachKey()
    {
        // Kestrel's setters refused them while the app was built, in messages that name no key: an abort (exit 134).
        using var ingress = ServiceProcess.StartIngress(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Kestrel:Limits:MaxRequestHeaderCount"] = "-1",
            ["Kestrel:Limits:MaxRequestHeadersTotalSize"] = "0",
            ["Kestrel:Limits:RequestHeadersTimeout"] = "00:00:10",
        });

        ingress.AssertRefusedAtStart(
            "PortAzure.Ingress did not start: Kestrel:Limits:",
            "Kestrel:Limits:MaxRequestHeaderCount is out of range ('-1'): Value must be a positive number.",
            "Kestrel:Limits:MaxRequestHeadersTotalSize is out of range ('0')");
        Assert.DoesNotContain("RequestHeadersTimeout", ingress.Output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("-4096")]
    [InlineData("Infinity")]
    public void Run_MinimumBodyRateBelowZeroOrInfinite_ExitsWithOneNamingTheKey(string rate)
    {
        // Below 0 read as "no minimum rate": the slow-body protection was gone without a word.
        using var ingress = ServiceProcess.StartIngress(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Kestrel:Limits:MinRequestBodyDataRate:BytesPerSecond"] = rate,
        });

        ingress.AssertRefusedAtStart("PortAzure.Ingress did not start: Kestrel:Limits:MinRequestBodyDataRate:BytesPerSecond must be a number of 0 (no minimum rate) or more");
    }

    [Fact]
    public void Run_OptionNotANumber_ExitsWithOneNamingTheKey()
    {
        // Read while the app is built (Kestrel's limits), before the host and its logging exist: an abort (exit 134).
        using var ingress = ServiceProcess.StartIngress(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:MaxBodyBytes"] = "lots",
        });

        ingress.AssertRefusedAtStart("PortAzure.Ingress did not start: Failed to convert configuration value 'lots' at 'Ingress:MaxBodyBytes'");
    }

    [Fact]
    public async Task Run_StartedFromAnotherDirectory_StillHasItsAppsettingsAndProxiesTheOperatorApi()
    {
        // `dotnet path/to/PortAzure.Ingress.dll` from elsewhere (a script, a service unit without a working directory) took
        // that directory as the content root: no appsettings.json, so no operator API routes, and /api/* answered 404.
        await using var lease = await SharedRedis.LeaseAsync();
        using var closed = new ClosedPort();
        using var ingress = ServiceProcess.StartIngress(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Admin:ApiKey"] = Relay.AdminKey,
            ["services:dispatcher:http:0"] = $"http://127.0.0.1:{closed.Port}",
        }, workingDirectory: Path.GetTempPath());
        using var client = new HttpClient { BaseAddress = await ingress.ListeningAddress.WaitAsync(TimeSpan.FromSeconds(60)) };

        using var request = new HttpRequestMessage(HttpMethod.Get, "/api/stats");
        request.Headers.TryAddWithoutValidation("X-Api-Key", Relay.AdminKey);
        using var response = await client.SendAsync(request);

        // Routed to the Dispatcher, which is not there.
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("dispatcher_unavailable", await ProblemResponses.ReasonAsync(response));
    }
}
