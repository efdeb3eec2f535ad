using Microsoft.Extensions.DependencyInjection;
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

    [Theory]
    [InlineData("2001:db8:1:2::1", "2001:db8:1:2::")]
    [InlineData("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::")]
    [InlineData("2001:db8:1:3::1", "2001:db8:1:3::")]
    [InlineData("::ffff:10.1.2.3", "10.1.2.3")]
    [InlineData("10.1.2.3", "10.1.2.3")]
    public void ClientKey_Address_IsTheBucketsKey(string address, string key)
    {
        // One IPv6 host usually holds a whole /64: keyed by address, it could take a bucket per request.
        var context = new Microsoft.AspNetCore.Http.DefaultHttpContext();
        context.Connection.RemoteIpAddress = IPAddress.Parse(address);

        Assert.Equal(key, PortAzure.Ingress.Edge.WebhookRateLimiting.ClientKey(context));
    }

    private static Action<Dictionary<string, string?>> Limits(int perClient, int burst, int global = 1000, int globalBurst = 1000) => c =>
    {
        c["Ingress:RateLimit:PermitsPerSecondPerClient"] = perClient.ToString(CultureInfo.InvariantCulture);
        c["Ingress:RateLimit:Burst"] = burst.ToString(CultureInfo.InvariantCulture);
        c["Ingress:RateLimit:GlobalPermitsPerSecond"] = global.ToString(CultureInfo.InvariantCulture);
        c["Ingress:RateLimit:GlobalBurst"] = globalBurst.ToString(CultureInfo.InvariantCulture);
    };

    [Fact]
    public async Task Post_ClientWithItsOpenCallsAtTheCap_Answers429UntilOneEnds()
    {
        // Bodies sent up to their last byte and then held: each pinned its bytes, unsigned, for minutes, and the bucket
        // (how fast calls start) let a client open hundreds of them.
        await using var relay = await Relay.StartAsync(c => c["Ingress:RateLimit:ConcurrentCallsPerClient"] = "2", dispatchers: 0);
        var meters = relay.Ingress.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        using var unverified = new Microsoft.Extensions.Diagnostics.Metrics.Testing.MetricCollector<long>(meters, PortAzure.Diagnostics.PortAzureDiagnostics.Name,
            PortAzure.Ingress.Diagnostics.IngressMetrics.UnverifiedName);
        var held = new List<(System.IO.Pipelines.Pipe Body, Task<HttpResponseMessage> Answer)>();
        for (var i = 0; i < 2; i++)
        {
            var body = new System.IO.Pipelines.Pipe();
            var request = new HttpRequestMessage(HttpMethod.Post, TestRuns.Path()) { Content = new StreamContent(body.Reader.AsStream()) };
            request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            // Past the client's write buffer, so that the headers and most of the body go out now.
            request.Content.Headers.ContentLength = 100_000;
            held.Add((body, relay.Ingress.Client.SendAsync(request)));
            await body.Writer.WriteAsync(new byte[99_999]);
        }
        await Eventually.HoldsAsync(() => Task.FromResult(unverified.GetMeasurementSnapshot().Sum(m => m.Value) == 2), Timeout,
            "the two held calls are reading their bodies");

        using (var refused = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId())))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
            Assert.Equal("rate_limited", await ProblemResponses.ReasonAsync(refused));
            Assert.NotNull(refused.Headers.RetryAfter);
        }
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        // Which client, at Debug (the test hosts' level): the 429 alone does not say.
        Assert.Contains(relay.Ingress.Logs.Lines, l => l.Contains("[1104]", StringComparison.Ordinal) && l.Contains("from 127.0.0.1:", StringComparison.Ordinal));

        // One held call ends (its last byte: an unsigned body, refused 401): a slot is free again.
        await held[0].Body.Writer.WriteAsync(new byte[1]);
        await held[0].Body.Writer.CompleteAsync();
        using (var ended = await held[0].Answer)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, ended.StatusCode);
        }
        using var accepted = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);

        await held[1].Body.Writer.CompleteAsync(new IOException("test over"));
        try
        {
            (await held[1].Answer).Dispose();
        }
        catch (HttpRequestException)
        {
        }
    }

    [Fact]
    public async Task Post_PastPerClientLimit_Answers429WithRetryAfterThenRecovers()
    {
        // One permit a second after the burst: the range below allows ten seconds of refills, however slow the machine.
        await using var relay = await Relay.StartAsync(Limits(perClient: 1, burst: 5), dispatchers: 0);

        // All at once, so the bucket refills little in between.
        var responses = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()))));

        var accepted = responses.Count(r => r.StatusCode == HttpStatusCode.Accepted);
        var refused = responses.Where(r => r.StatusCode == HttpStatusCode.TooManyRequests).ToList();
        Assert.Equal(responses.Length, accepted + refused.Count);
        Assert.InRange(accepted, 5, 15);
        Assert.Equal(accepted, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        var retryAfter = TimeSpan.Zero;
        foreach (var response in refused)
        {
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
            var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("rate_limited", problem.GetProperty("reason").GetString());
            Assert.Equal(429, problem.GetProperty("status").GetInt32());
            var delta = response.Headers.RetryAfter?.Delta;
            Assert.NotNull(delta);
            Assert.InRange(delta.Value, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(5));
            retryAfter = delta.Value > retryAfter ? delta.Value : retryAfter;
        }
        foreach (var response in responses)
        {
            response.Dispose();
        }

        // The limiter refills on a 100 ms heartbeat, so the refill can land just after Retry-After.
        await Task.Delay(retryAfter + TimeSpan.FromMilliseconds(300));
        using var again = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
    }

    [Fact]
    public async Task Get_HealthAndOperatorApiPastTheWebhookLimit_AreNotLimited()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 1, burst: 1, global: 1, globalBurst: 1));
        var flood = await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()))));
        Assert.Contains(flood, r => r.StatusCode == HttpStatusCode.TooManyRequests);

        for (var i = 0; i < 20; i++)
        {
            using var health = await relay.Ingress.Client.GetAsync("/health");
            using var alive = await relay.Ingress.Client.GetAsync("/alive");
            using var stats = await relay.Ingress.Client.SendAsync(relay.Operator(HttpMethod.Get, "/api/stats"));
            // /health and the operator API also ask Redis, which a loaded machine can make slow: what is asserted of
            // them is that the webhook's limit did not refuse them.
            Assert.NotEqual(HttpStatusCode.TooManyRequests, health.StatusCode);
            Assert.Equal(HttpStatusCode.OK, alive.StatusCode);
            Assert.NotEqual(HttpStatusCode.TooManyRequests, stats.StatusCode);
        }
    }

    [Fact]
    public async Task Post_OneClientFlooding_LeavesOtherClientsTheirAllowance()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 2, burst: 2, global: 6, globalBurst: 6), dispatchers: 0);
        var flooder = IPAddress.Parse("127.0.0.2");
        var other = IPAddress.Parse("127.0.0.3");

        // Were refused calls charged to the shared bucket, these 20 would empty it for everyone.
        var flood = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, flooder)));
        var others = new List<int>();
        for (var i = 0; i < 2; i++)
        {
            others.Add((await RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, other)).Status);
        }

        Assert.Contains(flood, r => r.Status == 429);
        Assert.All(others, status => Assert.Equal(202, status));
    }

    [Fact]
    public async Task Post_ForwardedForWithoutForwardedHeadersOn_DoesNotChooseTheBucket()
    {
        // Burst 1, refilled once a second: eight calls at once get a 429 however slowly a loaded machine sends them.
        await using var relay = await Relay.StartAsync(Limits(perClient: 1, burst: 1), dispatchers: 0);

        // A client naming a new address in each call: without the setting, the header is ignored.
        var statuses = await SendForwardedAsync(relay, Enumerable.Range(1, 8).Select(i => $"203.0.113.{i}"));

        Assert.Contains(HttpStatusCode.TooManyRequests, statuses);
    }

    [Fact]
    public async Task Post_ForwardedHeadersOn_BucketsByTheAddressTheProxyAppended()
    {
        // As the published manifest runs the services (ASPNETCORE_FORWARDEDHEADERS_ENABLED=true).
        await using var relay = await Relay.StartAsync(c =>
        {
            Limits(perClient: 1, burst: 1)(c);
            c["FORWARDEDHEADERS_ENABLED"] = "true";
        }, dispatchers: 0);

        // What a client writes into the header comes first; the proxy appends the address it saw, and only
        // that last entry counts. These eight calls come from one client, whatever it claims.
        var one = await SendForwardedAsync(relay, Enumerable.Range(1, 8).Select(i => $"198.51.100.{i}, 203.0.113.1"));
        var other = await SendForwardedAsync(relay, ["203.0.113.2"]);

        Assert.Contains(HttpStatusCode.TooManyRequests, one);
        Assert.All(other, status => Assert.Equal(HttpStatusCode.Accepted, status));
    }

    [Theory]
    [InlineData("10.0.0.0/8", true)]
    [InlineData("127.0.0.0/8", false)]
    public async Task Post_ForwardedHeadersOnWithTrustedProxyNetworks_BelievesOnlyThoseHops(string trusted, bool oneBucket)
    {
        // The test's calls come from 127.0.0.1. Not a trusted proxy: what it writes into X-Forwarded-For is ignored,
        // and its eight calls share its own bucket. A trusted one: each named address gets a bucket of its own.
        await using var relay = await Relay.StartAsync(c =>
        {
            Limits(perClient: 1, burst: 1)(c);
            c["FORWARDEDHEADERS_ENABLED"] = "true";
            c["Ingress:TrustedProxyNetworks:0"] = trusted;
        }, dispatchers: 0);

        var statuses = await SendForwardedAsync(relay, Enumerable.Range(1, 8).Select(i => $"203.0.113.{i}"));

        Assert.Equal(oneBucket, statuses.Contains(HttpStatusCode.TooManyRequests));
        Assert.All(statuses, s => Assert.Contains(s, new[] { HttpStatusCode.Accepted, HttpStatusCode.TooManyRequests }));
    }

    [Fact]
    public async Task Start_TrustedProxyNetworkNotCidr_FailsNamingIt()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:TrustedProxyNetworks:0"] = "10.0.0.300/8",
        }));

        Assert.Contains("Ingress:TrustedProxyNetworks holds '10.0.0.300/8'", error.ToString(), StringComparison.Ordinal);
    }

    private static async Task<HttpStatusCode[]> SendForwardedAsync(Relay relay, IEnumerable<string> forwardedFor) =>
        await Task.WhenAll(forwardedFor.Select(async value =>
        {
            using var request = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()));
            request.Headers.TryAddWithoutValidation("X-Forwarded-For", value);
            using var response = await relay.Ingress.Client.SendAsync(request);
            return response.StatusCode;
        }));

    [Fact]
    public async Task Post_PastGlobalLimit_Answers429EvenToClientsWithinTheirOwnLimit()
    {
        await using var relay = await Relay.StartAsync(Limits(perClient: 100, burst: 100, global: 2, globalBurst: 2), dispatchers: 0);

        var responses = await Task.WhenAll(Enumerable.Range(2, 10).Select(i =>
            RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, IPAddress.Parse($"127.0.0.{i}"))));

        Assert.All(responses, r => Assert.Contains(r.Status, new[] { 202, 429 }));
        Assert.InRange(responses.Count(r => r.Status == 202), 2, 8);
        Assert.Contains(responses, r => r.Status == 429 && r.Text.Contains("\"reason\":\"rate_limited\"", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Post_UnsignedFloodFromManyAddresses_LeavesTheSharedBucketToSignedCalls()
    {
        // Twenty addresses within their own buckets, none signing: they used to spend the shared bucket, and Port's
        // signed call beside them got 429. Each round races one signed call against the flood for two tokens.
        await using var relay = await Relay.StartAsync(Limits(perClient: 100, burst: 100, global: 2, globalBurst: 2), dispatchers: 0);

        var signed = new List<int>();
        for (var round = 0; round < 4; round++)
        {
            var flood = Enumerable.Range(10, 20).Select(i => RawHttp.SendAsync(relay.Ingress.BaseAddress, UnsignedRun(), Timeout, IPAddress.Parse($"127.0.0.{i}")));
            var port = RawHttp.SendAsync(relay.Ingress.BaseAddress, SignedRun(), Timeout, IPAddress.Parse("127.0.0.2"));
            var floodAnswers = await Task.WhenAll(flood);
            signed.Add((await port).Status);
            Assert.All(floodAnswers, r => Assert.Equal(401, r.Status));
            // One token a round, refilled at two a second.
            await Task.Delay(TimeSpan.FromSeconds(1.1));
        }

        Assert.All(signed, status => Assert.Equal(202, status));
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
        // The rate limits were read (and refused) while the proxy's routes were mapped, before the start-up validation: the
        // other sections' errors went unreported, and the exception escaped outside the host (an abort, exit 134).
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:MaxBodyBytes"] = "-5",
            ["Ingress:RateLimit:PermitsPerSecondPerClient"] = "10",
            ["Ingress:RateLimit:Burst"] = "5",
            ["Ingress:RateLimit:GlobalPermitsPerSecond"] = "0",
            ["Ingress:RateLimit:ConcurrentCallsPerClient"] = "0",
        }));
        Assert.Contains("Ingress:RateLimit:Burst", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:RateLimit:GlobalPermitsPerSecond", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:RateLimit:ConcurrentCallsPerClient", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:MaxBodyBytes", error.ToString(), StringComparison.Ordinal);
    }

    private static RawRequest UnsignedRun() => new("POST", Encoding.ASCII.GetBytes(BadInputCorpus.DefaultPath),
    [
        RawRequest.HeaderLine("Content-Type", "application/json"),
        RawRequest.HeaderLine(PortSignature.TimestampHeader, DateTimeOffset.UtcNow.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture)),
        RawRequest.HeaderLine(PortSignature.SignatureHeader, "v1,bm90IGEgc2lnbmF0dXJl"),
    ], TestRuns.Body(TestRuns.NewRunId()));

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
