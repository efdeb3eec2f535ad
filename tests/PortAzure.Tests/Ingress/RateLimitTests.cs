using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Signing;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class RateLimitTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private static Action<Dictionary<string, string?>> Limits(int perClient, int burst, int global = 1000, int globalBurst = 1000) => c =>
    {
        c["Ingress:RateLimit:PermitsPerSecondPerClient"] = perClient.ToString(CultureInfo.InvariantCulture);
        c["Ingress:RateLimit:Burst"] = burst.ToString(CultureInfo.InvariantCulture);
        c["Ingress:RateLimit:GlobalPermitsPerSecond"] = global.ToString(CultureInfo.InvariantCulture);
        c["Ingress:RateLimit:GlobalBurst"] = globalBurst.ToString(CultureInfo.InvariantCulture);
    };

    [Fact]
    public async Task Post_PastPerClientLimit_Answers429WithRetryAfterThenRecovers()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 5, burst: 5), dispatchers: 0);
        var clock = Stopwatch.StartNew();

        HttpResponseMessage? refused = null;
        var accepted = 0;
        for (var i = 0; i < 50 && refused is null; i++)
        {
            var response = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
            if (response.StatusCode == HttpStatusCode.TooManyRequests)
            {
                refused = response;
                break;
            }
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            response.Dispose();
            accepted++;
        }

        Assert.NotNull(refused);
        using (refused)
        {
            // The bucket refills 5 a second: at most that many more could have slipped in meanwhile.
            Assert.InRange(accepted, 5, 5 + (5 * (int)Math.Ceiling(clock.Elapsed.TotalSeconds)));
            Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
            var problem = await refused.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("rate_limited", problem.GetProperty("reason").GetString());
            Assert.Equal(429, problem.GetProperty("status").GetInt32());
            var retryAfter = refused.Headers.RetryAfter?.Delta;
            Assert.NotNull(retryAfter);
            Assert.InRange(retryAfter.Value, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(5));
            Assert.Equal(accepted, await relay.Db.StreamLengthAsync(RedisKeys.Stream));

            // The limiter refills on a 100 ms heartbeat, so the refill can land just after Retry-After.
            await Task.Delay(retryAfter.Value + TimeSpan.FromMilliseconds(300));
        }
        using var again = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
    }

    [Fact]
    public async Task Get_HealthAndOperatorApiPastTheWebhookLimit_AreNotLimited()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 1, burst: 1, global: 1, globalBurst: 1));
        using (var first = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId())))
        using (var second = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId())))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, second.StatusCode);
        }

        for (var i = 0; i < 20; i++)
        {
            using var health = await relay.Ingress.Client.GetAsync("/health");
            using var alive = await relay.Ingress.Client.GetAsync("/alive");
            using var stats = await relay.Ingress.Client.SendAsync(relay.Operator(HttpMethod.Get, "/api/stats"));
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);
            Assert.Equal(HttpStatusCode.OK, alive.StatusCode);
            Assert.Equal(HttpStatusCode.OK, stats.StatusCode);
        }
    }

    [Fact]
    public async Task Post_OneClientFlooding_LeavesOtherClientsTheirAllowance()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 2, burst: 2, global: 6, globalBurst: 6), dispatchers: 0);
        var flooder = IPAddress.Parse("127.0.0.2");
        var other = IPAddress.Parse("127.0.0.3");

        var flood = new List<int>();
        for (var i = 0; i < 20; i++)
        {
            flood.Add((await RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, flooder)).Status);
        }
        var others = new List<int>();
        for (var i = 0; i < 2; i++)
        {
            others.Add((await RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, other)).Status);
        }

        Assert.Contains(429, flood);
        Assert.All(others, status => Assert.Equal(202, status));
    }

    [Fact]
    public async Task Post_PastGlobalLimit_Answers429ForEveryClient()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 100, burst: 100, global: 2, globalBurst: 2), dispatchers: 0);

        var statuses = new List<int>();
        foreach (var client in new[] { "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5" })
        {
            statuses.Add((await RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, IPAddress.Parse(client))).Status);
        }

        Assert.Equal(202, statuses[0]);
        Assert.Equal(202, statuses[1]);
        Assert.Contains(429, statuses.Skip(2));
    }

    [Fact]
    public async Task Post_RateLimitDisabled_NeverAnswers429()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            Limits(perClient: 1, burst: 1, global: 1, globalBurst: 1)(c);
            c["Ingress:RateLimit:Enabled"] = "false";
        }, dispatchers: 0);

        for (var i = 0; i < 10; i++)
        {
            using var response = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }
    }

    [Fact]
    public async Task Start_InvalidRateLimitOptions_ReportsEveryErrorAtOnce()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:RateLimit:PermitsPerSecondPerClient"] = "10",
            ["Ingress:RateLimit:Burst"] = "5",
            ["Ingress:RateLimit:GlobalPermitsPerSecond"] = "0",
        }));
        Assert.Contains("Ingress:RateLimit:Burst", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:RateLimit:GlobalPermitsPerSecond", error.ToString(), StringComparison.Ordinal);
    }

    private static RawRequest SignedRun()
    {
        var body = TestRuns.Body(TestRuns.NewRunId());
        var timestamp = DateTimeOffset.UtcNow.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        return new RawRequest("POST", Encoding.ASCII.GetBytes(BadInputCorpus.DefaultPath),
        [
            RawRequest.HeaderLine("Content-Type", "application/json"),
            RawRequest.HeaderLine(PortSignature.TimestampHeader, timestamp),
            RawRequest.HeaderLine(PortSignature.SignatureHeader, PortSignature.ComputeV1(TestRuns.Secret, timestamp, body)),
        ], body);
    }
}
